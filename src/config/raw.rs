//! The raw configuration: exactly what the operator typed, as serde reads it. Every table
//! denies unknown fields, so a typo is an error rather than a silently ignored setting.
//! Nothing here is checked beyond TOML types; [`super::validate`] turns these into the
//! runtime types. Also: a spanned view of each file, used only to put line numbers on
//! problems. Raw types must never reach the runtime.

use serde::Deserialize;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

use super::CharsetPolicy;

/// `sluss.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMain {
    pub data_dir: Option<String>,
    pub keys_dir: Option<String>,
    pub jobs_dir: Option<String>,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub log: RawLog,
    pub sftp: Option<super::sftp::RawSftpServer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub duplicate_window_days: Option<i64>,
    pub delivery_attempts: Option<i64>,
    pub retry_initial_seconds: Option<i64>,
    pub retry_max_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<RawLogFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawLogFormat {
    Plain,
    Json,
}

/// `jobs.d/<id>.toml`: one partner.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartnerFile {
    pub partner: RawPartner,
    pub routing: Option<RawRouting>,
    pub seal: Option<RawSeal>,
    pub payments: Option<RawPayments>,
    pub delivery: Option<RawDelivery>,
    pub archive: Option<RawArchive>,
    /// `[[pull]]` jobs (see `config/pull.rs`).
    #[serde(default)]
    pub pull: Vec<super::pull::RawPull>,
    pub sftp: Option<super::sftp::RawSftpAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartner {
    pub id: String,
    pub name: String,
    pub role: RawRole,
    pub org_number: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawRole {
    Customer,
    Bank,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    #[serde(default)]
    pub bankgiro: Vec<String>,
    pub customer_number: Option<String>,
    #[serde(default)]
    pub accounts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSeal {
    /// No default on purpose: whether payment orders must be sealed is said out loud.
    pub required: bool,
    #[serde(default)]
    pub key_files: Vec<String>,
    #[serde(default)]
    pub generate_missing_keys: bool,
    pub charset: Option<CharsetPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPayments {
    pub bank: Option<String>,
    pub duplicate_window_days: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Kept as a table: its allowed keys depend on `type` (local here in validate; sftp and
    /// ftps in `endpoint`, which deserialises the table into its own raw types).
    pub endpoint: Option<toml::Table>,
    pub name_template: Option<String>,
    pub attempts: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    pub mode: RawArchiveMode,
    #[serde(default)]
    pub recipients: Vec<String>,
    pub retention_days: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawArchiveMode {
    Delete,
    Age,
}

/// A parsed file kept with its spans, to turn dotted field paths into line numbers and
/// byte offsets of serde errors into dotted field paths.
pub struct SpannedDoc<'a> {
    text: &'a str,
    root: toml::Spanned<DeTable<'a>>,
}

/// One step of a dotted field path: `seal.key_files[0]` is `seal`, `key_files`, `[0]`.
enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

impl<'a> SpannedDoc<'a> {
    pub fn parse(text: &'a str) -> Result<Self, toml::de::Error> {
        Ok(SpannedDoc {
            text,
            root: DeTable::parse(text)?,
        })
    }

    /// 1-based line of byte `offset`.
    pub fn line_at(&self, offset: usize) -> usize {
        line_at(self.text, offset)
    }

    /// The line of the deepest part of `path` that exists in the file: a missing field is
    /// reported at its table, a missing table at no line.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut span: Option<Range<usize>> = None;
        let mut table = Some(self.root.get_ref());
        let mut array: Option<&toml::de::DeArray<'_>> = None;
        for seg in segments(path) {
            let next = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => t.get(k),
                (Seg::Index(i), _, Some(a)) => a.get(i),
                _ => None,
            };
            let Some(v) = next else { break };
            span = Some(v.span());
            table = v.get_ref().as_table();
            array = v.get_ref().as_array();
        }
        span.map(|s| self.line_at(s.start))
    }

    /// The dotted path of the innermost key whose key or value covers `offset`.
    pub fn path_at(&self, offset: usize) -> String {
        let mut path = String::new();
        walk_table(self.root.get_ref(), offset, &mut path);
        if !path.is_empty() {
            return path;
        }
        // A `[table]`'s span covers only its header, not the keys below it: the key
        // belongs to the last header before it.
        let mut best = None;
        headers(self.root.get_ref(), "", offset, &mut best);
        let Some((_, mut path, table)) = best else {
            return path;
        };
        walk_table(table, offset, &mut path);
        path
    }
}

/// The table (any depth) with the latest start at or before `offset`.
fn headers<'t, 'i>(
    t: &'t DeTable<'i>,
    prefix: &str,
    offset: usize,
    best: &mut Option<(usize, String, &'t DeTable<'i>)>,
) {
    for (k, v) in t.iter() {
        let Some(inner) = v.get_ref().as_table() else {
            continue;
        };
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        let start = v.span().start;
        if start <= offset && best.as_ref().is_none_or(|(b, _, _)| start >= *b) {
            *best = Some((start, path.clone(), inner));
        }
        headers(inner, &path, offset, best);
    }
}

fn walk_table(t: &DeTable<'_>, offset: usize, path: &mut String) {
    for (k, v) in t.iter() {
        if k.span().contains(&offset) || v.span().contains(&offset) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k.get_ref());
            walk_value(v.get_ref(), offset, path);
            return;
        }
    }
}

fn walk_value(v: &DeValue<'_>, offset: usize, path: &mut String) {
    if let Some(t) = v.as_table() {
        walk_table(t, offset, path);
    } else if let Some(a) = v.as_array() {
        for (i, e) in a.iter().enumerate() {
            if e.span().contains(&offset) {
                path.push_str(&format!("[{i}]"));
                walk_value(e.get_ref(), offset, path);
                return;
            }
        }
    }
}

pub fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
