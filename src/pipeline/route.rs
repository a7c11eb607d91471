//! Routing: pure code from (who delivered the file, what it is) to where it goes.
//!
//! No I/O and no clock: the same inputs always give the same answer, so every rule is a unit
//! test. Facts that need the ledger (which partner sent the pain.001 a pain.002 answers) are
//! looked up by the caller and passed in.

use crate::config::{Config, Partner, Role};
use crate::formats::{Kind, Recognition};

/// Where a recognised file goes, or why it goes nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Deliver to these partners (by id); never empty.
    Deliver(Vec<String>),
    /// Refuse: keep in quarantine with this reason.
    Refuse { code: &'static str, reason: String },
}

/// Decide the destinations of a file delivered by `from`.
///
/// `original_sender` is the partner whose earlier file (by ISO 20022 message id) this file
/// answers, if the ledger knows one (pain.002 → the pain.001's sender).
pub fn route(
    config: &Config,
    from: &Partner,
    rec: &Recognition,
    original_sender: Option<&str>,
) -> Route {
    match from.role {
        Role::Customer => route_from_customer(from, rec),
        Role::Bank => route_from_bank(config, rec, original_sender),
    }
}

fn route_from_customer(from: &Partner, rec: &Recognition) -> Route {
    if rec.kind == Kind::Unknown {
        return Route::Refuse {
            code: "unknown-kind",
            reason: "not a recognised payment file (expected an LB payment order, an Autogiro \
                     order or a pain.001)"
                .into(),
        };
    }
    if !rec.kind.is_payment_order() {
        return Route::Refuse {
            code: "kind-not-allowed",
            reason: format!(
                "a customer may send only payment orders; this file is a {} (a bank's file)",
                rec.kind.as_str()
            ),
        };
    }
    match &from.bank {
        Some(bank) => Route::Deliver(vec![bank.clone()]),
        // Validation makes every customer name a bank; kept total rather than panicking.
        None => Route::Refuse {
            code: "no-bank",
            reason: format!("partner {} has no bank configured (payments.bank)", from.id),
        },
    }
}

fn route_from_bank<'a>(
    config: &'a Config,
    rec: &Recognition,
    original_sender: Option<&str>,
) -> Route {
    if rec.kind == Kind::Unknown {
        return Route::Refuse {
            code: "unknown-kind",
            reason: "not a recognised bank file: cannot tell which customer it belongs to".into(),
        };
    }
    if rec.kind.is_payment_order() {
        return Route::Refuse {
            code: "kind-not-allowed",
            reason: format!(
                "a bank sent a payment order ({}); payment orders only travel customer → bank",
                rec.kind.as_str()
            ),
        };
    }
    // Every routing key the file carries votes for the customer that registered it. One
    // customer → deliver; none → nobody to give it to; several → never guess with money.
    let mut owners: Vec<&str> = Vec::new();
    let mut add = |p: Option<&'a Partner>| {
        if let Some(p) = p
            && p.role == Role::Customer
            && !owners.contains(&p.id.as_str())
        {
            owners.push(p.id.as_str());
        }
    };
    for bg in &rec.routing.bankgiro {
        add(config.partner_by_bankgiro(bg));
    }
    if let Some(n) = &rec.routing.customer_number {
        add(config.partner_by_customer_number(n));
    }
    for acct in &rec.routing.account {
        add(config.partner_by_account(acct));
    }
    if let Some(sender) = original_sender {
        add(config.partner(sender));
    }
    match owners.len() {
        1 => Route::Deliver(vec![owners[0].to_string()]),
        0 => Route::Refuse {
            code: "unroutable",
            reason: format!(
                "no customer is registered for this {} (routing keys: {})",
                rec.kind.as_str(),
                describe_keys(rec)
            ),
        },
        _ => Route::Refuse {
            code: "ambiguous-route",
            reason: format!(
                "this {} names several customers ({}); refusing to guess",
                rec.kind.as_str(),
                owners.join(", ")
            ),
        },
    }
}

fn describe_keys(rec: &Recognition) -> String {
    let r = &rec.routing;
    let mut parts = Vec::new();
    if !r.bankgiro.is_empty() {
        parts.push(format!("bankgiro {}", r.bankgiro.join(", ")));
    }
    if let Some(n) = &r.customer_number {
        parts.push(format!("customer number {n}"));
    }
    if !r.account.is_empty() {
        parts.push(format!("account {}", r.account.join(", ")));
    }
    if let Some(m) = &r.original_message_id {
        parts.push(format!("original message id {m}"));
    }
    if parts.is_empty() {
        "none found".into()
    } else {
        parts.join("; ")
    }
}
