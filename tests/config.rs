//! Configuration: the shipped example runs as is, every unknown key is refused with its file
//! named, and every single-file and cross-file check reports its problem with the fix —
//! all of them in one run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluss::config::{self, Archive, ConfigErrors, Endpoint, Role};

use crate::util;

const SHIPPED: &[&str] = &["sluss.toml", "jobs.d/demo.toml", "jobs.d/demo-bank.toml"];

/// A temp dir holding a copy of the shipped `sluss.toml` and `jobs.d/`.
fn example() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::create_dir(tmp.path().join("jobs.d")).unwrap();
    for f in SHIPPED {
        fs::copy(root.join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    p
}

fn edit(dir: &Path, rel: &str, from: &str, to: &str) {
    let p = dir.join(rel);
    let text = fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{rel} has no `{from}`");
    fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn key_file(dir: &Path, rel: &str, mode: u32) -> PathBuf {
    let p = write(dir, rel, &format!("{}\n", util::TEST_KEY_HEX));
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// `sluss check --config DIR` → (exit code, stdout + stderr).
fn check(dir: &Path) -> (i32, String) {
    let out = util::sluss()
        .args(["check", "--config"])
        .arg(dir)
        .output()
        .unwrap();
    let mut text = String::from_utf8(out.stdout).unwrap();
    text.push_str(&String::from_utf8(out.stderr).unwrap());
    (out.status.code().unwrap(), text)
}

fn errors(dir: &Path) -> ConfigErrors {
    match config::load(dir) {
        Ok(_) => panic!("config in {} unexpectedly valid", dir.display()),
        Err(e) => e,
    }
}

/// The one problem whose message contains `needle`, or a panic listing all of them.
fn problem<'a>(errs: &'a ConfigErrors, needle: &str) -> &'a config::ConfigError {
    let found: Vec<_> = errs
        .0
        .iter()
        .filter(|e| e.to_string().contains(needle))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one problem with `{needle}`, got:\n{errs}"
    );
    found[0]
}

/// A second customer, valid on its own; tests change one thing in it.
const ACME: &str = r#"
[partner]
id = "acme"
name = "Acme AB"
role = "customer"

[routing]
bankgiro = ["5050-1055"]

[seal]
required = true
key_files = ["keys/acme.seal"]

[payments]
bank = "demo-bank"
"#;

fn with_acme(dir: &Path, from: &str, to: &str) {
    assert!(ACME.contains(from), "ACME has no `{from}`");
    write(dir, "jobs.d/acme.toml", &ACME.replacen(from, to, 1));
    key_file(dir, "keys/acme.seal", 0o600);
}

#[test]
fn shipped_example_checks_ok_and_reports_key_to_generate() {
    let tmp = example();
    let (code, out) = check(tmp.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: 2 partners (demo: customer, demo-bank: bank)"),
        "{out}"
    );
    assert!(
        out.contains("note: keys/demo.seal will be generated at first start"),
        "{out}"
    );
    // check only reads
    assert!(!tmp.path().join("keys").exists());
    assert!(!tmp.path().join("var").exists());
}

#[test]
fn shipped_example_loads_into_resolved_runtime_types() {
    let tmp = example();
    let loaded = config::load(tmp.path()).unwrap();
    let c = &loaded.config;
    let dir = fs::canonicalize(tmp.path()).unwrap();
    assert_eq!(c.dir, dir);
    assert_eq!(c.data_dir, dir.join("var"));
    assert_eq!(c.jobs_dir, dir.join("jobs.d"));
    assert_eq!(c.defaults.delivery_attempts, 10);

    let demo = c.partner("demo").unwrap();
    assert_eq!(demo.role, Role::Customer);
    assert_eq!(demo.routing.bankgiro, vec!["0009912346".to_string()]);
    assert_eq!(
        demo.routing.accounts,
        vec!["SE4550000000058398257466".to_string()]
    );
    assert_eq!(demo.org_number.as_deref(), Some("556677-8899"));
    assert!(demo.seal.required);
    assert!(demo.seal.keys.is_empty(), "the key is pending, not loaded");
    assert_eq!(demo.seal.key_files, vec![dir.join("keys/demo.seal")]);
    assert_eq!(demo.bank.as_deref(), Some("demo-bank"));
    assert_eq!(
        demo.delivery.endpoint,
        Endpoint::Local {
            path: dir.join("var/download/demo")
        }
    );
    assert_eq!(demo.archive, Archive::Delete);
    assert_eq!(demo.source_file, dir.join("jobs.d/demo.toml"));

    let bank = c.partner("demo-bank").unwrap();
    assert_eq!(bank.role, Role::Bank);
    assert_eq!(
        bank.delivery.endpoint,
        Endpoint::Local {
            path: dir.join("var/bank-outbox")
        }
    );

    // The shipped example generates its seal key, the SFTP host keys and the demo client key.
    let mut pending: Vec<(config::PendingKeyKind, PathBuf)> = loaded
        .pending_keys
        .iter()
        .map(|k| (k.kind, k.path.clone()))
        .collect();
    pending.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        pending,
        vec![
            (
                config::PendingKeyKind::SshClientKey,
                dir.join("keys/demo.authorized_keys")
            ),
            (config::PendingKeyKind::SealKey, dir.join("keys/demo.seal")),
            (
                config::PendingKeyKind::SshHostEd25519,
                dir.join("keys/ssh_host_ed25519_key")
            ),
            (
                config::PendingKeyKind::SshHostRsa,
                dir.join("keys/ssh_host_rsa_key")
            ),
        ]
    );
    let seal_pending = loaded
        .pending_keys
        .iter()
        .find(|k| k.kind == config::PendingKeyKind::SealKey)
        .unwrap();
    assert_eq!(seal_pending.partner, "demo");

    for bg in ["991-2346", "9912346", "0009912346"] {
        assert_eq!(c.partner_by_bankgiro(bg).unwrap().id, "demo", "{bg}");
    }
    assert!(c.partner_by_bankgiro("991-2347").is_none());
    assert_eq!(
        c.partner_by_account("se45 5000 0000 0583 9825 7466")
            .unwrap()
            .id,
        "demo"
    );
    assert_eq!(c.partner_by_customer_number("123456").unwrap().id, "demo");
    assert!(c.partner_by_customer_number("654321").is_none());
}

#[test]
fn existing_key_file_is_used_as_it_is() {
    let tmp = example();
    key_file(tmp.path(), "keys/demo.seal", 0o600);
    let loaded = config::load(tmp.path()).unwrap();
    assert!(
        !loaded
            .pending_keys
            .iter()
            .any(|k| k.kind == config::PendingKeyKind::SealKey),
        "an existing seal key is not generated again"
    );
    assert_eq!(loaded.config.partner("demo").unwrap().seal.keys.len(), 1);
    let (code, out) = check(tmp.path());
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("keys/demo.seal will be generated"), "{out}");
    assert!(out.contains("seal key for demo: KVV "), "{out}");
}

/// Every place a `bogus_key = 1` can go in `text`: the root table, after every `[header]`,
/// and inside every inline table.
fn with_bogus_key_everywhere(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![("(root)".to_string(), format!("bogus_key = 1\n{text}"))];
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if t.starts_with('[') {
            let mut v = lines.clone();
            v.insert(i + 1, "bogus_key = 1");
            out.push((t.to_string(), v.join("\n")));
        }
        if let Some(pos) = l.find("= {") {
            let mut v = lines.clone();
            let changed = format!("{}= {{ bogus_key = 1,{}", &l[..pos], &l[pos + 3..]);
            v[i] = &changed;
            out.push((format!("inline table on line {}", i + 1), v.join("\n")));
        }
    }
    out
}

#[test]
fn unknown_key_in_every_table_of_every_shipped_file_is_refused() {
    let docs =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/jobs.md")).unwrap();
    let mut cases = 0;
    for file in SHIPPED {
        let original =
            fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        for (table, text) in with_bogus_key_everywhere(&original) {
            let tmp = example();
            fs::write(tmp.path().join(file), &text).unwrap();
            let errs = errors(tmp.path());
            let e = problem(&errs, "bogus_key");
            assert!(e.file.ends_with(file), "{file} {table}: {e}");
            assert!(e.field.ends_with("bogus_key"), "{file} {table}: {e}");
            assert!(e.line.is_some(), "{file} {table}: {e}");
            // The refusal lists the table's fields: each must be documented.
            for field in e.message.split('`').skip(3).step_by(2) {
                let documented = docs.contains(&format!("| `{field}` |"))
                    || docs.contains(&format!("### `[{field}]`"));
                assert!(
                    documented,
                    "{field} ({file} {table}) is not in docs/jobs.md"
                );
            }
            cases += 1;
        }
    }
    // root + 3 tables in sluss.toml, root + 6 in demo, root + 3 + the inline endpoint in demo-bank
    assert!(cases >= 15, "only {cases} tables tried");
}

#[test]
fn unknown_key_is_reported_by_check_with_file_line_and_field() {
    let tmp = example();
    edit(
        tmp.path(),
        "jobs.d/demo.toml",
        "[seal]\n",
        "[seal]\nrequird = true\n",
    );
    let (code, out) = check(tmp.path());
    assert_eq!(code, 1, "{out}");
    let line = fs::read_to_string(tmp.path().join("jobs.d/demo.toml"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("requird"))
        .unwrap()
        + 1;
    assert!(
        out.contains(&format!(
            "jobs.d/demo.toml:{line}: seal.requird: unknown field `requird`"
        )),
        "{out}"
    );
    assert!(out.contains("fix: remove `requird`"), "{out}");
}

#[test]
fn two_partners_claiming_one_bankgiro_number() {
    let tmp = example();
    with_acme(tmp.path(), "5050-1055", "0009912346");
    let errs = errors(tmp.path());
    // Reported once, in one of the two files, naming the other.
    let e = problem(&errs, "bankgiro 0009912346 is also claimed by partner `");
    assert_eq!(e.field, "routing.bankgiro[0]");
    let text = e.to_string();
    assert!(
        text.contains("acme.toml:") && text.contains("demo.toml:"),
        "{e}"
    );
    assert!(e.fix.contains("remove it from one of the two files"), "{e}");
}

#[test]
fn two_partners_claiming_one_account_or_customer_number() {
    let tmp = example();
    with_acme(
        tmp.path(),
        "[seal]",
        "customer_number = \"123456\"\naccounts = [\"se4550000000058398257466\"]\n\n[seal]",
    );
    let errs = errors(tmp.path());
    problem(&errs, "customer number 123456 is also claimed by partner `");
    problem(
        &errs,
        "account SE4550000000058398257466 is also claimed by partner `",
    );
    assert_eq!(errs.0.len(), 2, "{errs}");
}

#[test]
fn route_to_a_partner_that_does_not_exist() {
    let tmp = example();
    with_acme(tmp.path(), "bank = \"demo-bank\"", "bank = \"nordbank\"");
    let errs = errors(tmp.path());
    let e = problem(&errs, "there is no partner `nordbank`");
    assert_eq!(e.field, "payments.bank");
    assert!(e.fix.contains("demo-bank"), "{e}");
}

#[test]
fn route_to_a_partner_that_is_not_a_bank() {
    let tmp = example();
    with_acme(tmp.path(), "bank = \"demo-bank\"", "bank = \"demo\"");
    let errs = errors(tmp.path());
    problem(&errs, "`demo` is a customer, not a bank");
}

#[test]
fn customer_without_a_bank() {
    let tmp = example();
    with_acme(tmp.path(), "bank = \"demo-bank\"", "");
    let errs = errors(tmp.path());
    let e = problem(&errs, "a customer needs the bank its payment orders go to");
    assert_eq!(e.field, "payments.bank");
}

#[test]
fn bank_with_seal_or_payments_tables() {
    let tmp = example();
    let p = tmp.path().join("jobs.d/demo-bank.toml");
    let text = fs::read_to_string(&p).unwrap();
    fs::write(
        &p,
        format!("{text}\n[seal]\nrequired = false\n\n[payments]\nbank = \"demo-bank\"\n"),
    )
    .unwrap();
    let errs = errors(tmp.path());
    problem(&errs, "a bank partner has no seal policy");
    problem(&errs, "a bank partner sends no payment orders");
}

#[test]
fn two_partners_delivering_into_one_folder() {
    let tmp = example();
    write(
        tmp.path(),
        "jobs.d/other-bank.toml",
        r#"
[partner]
id = "other-bank"
name = "Other Bank"
role = "bank"

[delivery]
endpoint = { type = "local", path = "./var/../var/bank-outbox" }
"#,
    );
    let errs = errors(tmp.path());
    let e = problem(&errs, "the same folder as partner `demo-bank`");
    assert!(e.file.ends_with("jobs.d/other-bank.toml"));
    assert_eq!(e.field, "delivery.endpoint.path");
}

#[test]
fn seal_required_without_key_files() {
    let tmp = example();
    with_acme(tmp.path(), "key_files = [\"keys/acme.seal\"]", "");
    let errs = errors(tmp.path());
    let e = problem(&errs, "seals are required but no key file is given");
    assert_eq!(e.field, "seal.key_files");
}

#[test]
fn missing_key_file_is_an_error_unless_marked_generated() {
    let tmp = example();
    with_acme(tmp.path(), "required = true", "required = true");
    fs::remove_file(tmp.path().join("keys/acme.seal")).unwrap();
    let (code, out) = check(tmp.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("acme.toml:") && out.contains("seal.key_files[0]: seal key file"),
        "{out}"
    );
    assert!(out.contains("keys/acme.seal does not exist"), "{out}");
    // the demo key (generate_missing_keys) is still not an error
    let errs = errors(tmp.path());
    assert_eq!(errs.0.len(), 1, "{errs}");
}

#[test]
fn loose_key_file_permissions_are_refused_with_chmod_fix() {
    let tmp = example();
    let key = key_file(tmp.path(), "keys/demo.seal", 0o644);
    let (code, out) = check(tmp.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("readable or writable by group or others (mode 0644)"),
        "{out}"
    );
    let canonical = fs::canonicalize(&key).unwrap();
    assert!(
        out.contains(&format!("fix: chmod 600 {}", canonical.display())),
        "{out}"
    );
    // generate_missing_keys does not excuse a file that is there
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(check(tmp.path()).0, 0);
}

#[test]
fn key_file_that_is_not_a_key_is_refused() {
    let tmp = example();
    let key = write(tmp.path(), "keys/demo.seal", "not a key\n");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let errs = errors(tmp.path());
    let e = &errs.0[0];
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(e.field, "seal.key_files[0]");
    assert!(e.fix.contains("sluss keygen seal"), "{e}");
}

#[test]
fn invalid_bankgiro_check_digit() {
    let tmp = example();
    edit(tmp.path(), "jobs.d/demo.toml", "991-2346", "991-2347");
    let errs = errors(tmp.path());
    let e = problem(&errs, "`991-2347` is not a valid bankgiro number");
    assert_eq!(e.field, "routing.bankgiro[0]");
    let line = fs::read_to_string(tmp.path().join("jobs.d/demo.toml"))
        .unwrap()
        .lines()
        .position(|l| l.contains("991-2347"))
        .unwrap()
        + 1;
    assert_eq!(e.line, Some(line));
}

#[test]
fn invalid_iban_customer_number_and_org_number() {
    let tmp = example();
    edit(tmp.path(), "jobs.d/demo.toml", "7466", "7467");
    edit(tmp.path(), "jobs.d/demo.toml", "\"123456\"", "\"12345\"");
    edit(tmp.path(), "jobs.d/demo.toml", "556677-8899", "55667-78899");
    let errs = errors(tmp.path());
    problem(&errs, "is not a valid IBAN");
    problem(&errs, "`12345` is not a Bankgirot customer number");
    problem(&errs, "`55667-78899` is not an organisation number");
}

#[test]
fn name_template_without_id() {
    let tmp = example();
    edit(
        tmp.path(),
        "jobs.d/demo.toml",
        "{partner}-{kind}-{date}-{id}.dat",
        "{partner}-{date}.dat",
    );
    let errs = errors(tmp.path());
    let e = problem(&errs, "does not contain `{id}`");
    assert_eq!(e.field, "delivery.name_template");
}

#[test]
fn incomplete_remote_endpoint_names_the_missing_field() {
    let tmp = example();
    edit(
        tmp.path(),
        "jobs.d/demo-bank.toml",
        "{ type = \"local\", path = \"var/bank-outbox\" }",
        "{ type = \"sftp\", host = \"h2h.bank.example\" }",
    );
    let errs = errors(tmp.path());
    let e = problem(&errs, "an sftp endpoint needs `user`");
    assert_eq!(e.field, "delivery.endpoint.user");
}

#[test]
fn file_name_must_equal_partner_id() {
    let tmp = example();
    fs::rename(
        tmp.path().join("jobs.d/demo-bank.toml"),
        tmp.path().join("jobs.d/bank.toml"),
    )
    .unwrap();
    let errs = errors(tmp.path());
    let e = problem(&errs, "does not match the file name `bank.toml`");
    assert!(e.file.ends_with("jobs.d/bank.toml"));
}

#[test]
fn age_archive_needs_valid_recipients() {
    let tmp = example();
    edit(
        tmp.path(),
        "jobs.d/demo.toml",
        "mode = \"delete\"",
        "mode = \"age\"\nrecipients = [\"age1notarecipient\"]",
    );
    let errs = errors(tmp.path());
    let e = problem(&errs, "is not an age X25519 recipient");
    assert_eq!(e.field, "archive.recipients[0]");

    let good = age::x25519::Identity::generate().to_public().to_string();
    edit(tmp.path(), "jobs.d/demo.toml", "age1notarecipient", &good);
    let loaded = config::load(tmp.path()).unwrap();
    assert_eq!(
        loaded.config.partner("demo").unwrap().archive,
        Archive::Age {
            recipients: vec![good],
            retention_days: 90
        }
    );
}

#[test]
fn several_problems_in_several_files_are_all_reported() {
    let tmp = example();
    edit(
        tmp.path(),
        "sluss.toml",
        "delivery_attempts = 10",
        "delivery_attempts = 0",
    );
    edit(tmp.path(), "jobs.d/demo.toml", "991-2346", "991-2347");
    edit(tmp.path(), "jobs.d/demo.toml", "{id}", "{nr}");
    edit(tmp.path(), "jobs.d/demo-bank.toml", "\"local\"", "\"ftps\"");
    let (code, out) = check(tmp.path());
    assert_eq!(code, 1, "{out}");
    for needle in [
        "sluss.toml:",
        "defaults.delivery_attempts: 0 is out of range",
        "routing.bankgiro[0]: `991-2347`",
        "delivery.name_template:",
        "demo-bank.toml:",
        "unknown field `path` for an ftps endpoint",
        "4 problems found",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    assert_eq!(
        out.lines().filter(|l| l.contains("(fix: ")).count(),
        4,
        "{out}"
    );
}

#[test]
fn missing_config_dir_exits_2_and_missing_main_file_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = check(&tmp.path().join("nowhere"));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read config directory"), "{out}");

    let (code, out) = check(tmp.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("sluss.toml: file not found"), "{out}");
}

#[test]
fn syntax_error_is_reported_with_its_line() {
    let tmp = example();
    edit(
        tmp.path(),
        "jobs.d/demo-bank.toml",
        "role = \"bank\"",
        "role = \"bank",
    );
    let errs = errors(tmp.path());
    let e = problem(&errs, "not valid TOML");
    assert!(e.file.ends_with("jobs.d/demo-bank.toml"));
    let line = fs::read_to_string(tmp.path().join("jobs.d/demo-bank.toml"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("role"))
        .unwrap()
        + 1;
    assert_eq!(e.line, Some(line));
    // the customer naming the broken bank is not blamed for it
    assert_eq!(errs.0.len(), 1, "{errs}");
}

#[test]
fn examples_in_the_docs_are_valid() {
    let docs =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/jobs.md")).unwrap();
    let blocks: Vec<&str> = docs
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 3, "sluss.toml, a customer, a bank");
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "sluss.toml", blocks[0]);
    write(tmp.path(), "jobs.d/demo.toml", blocks[1]);
    write(tmp.path(), "jobs.d/demo-bank.toml", blocks[2]);
    key_file(tmp.path(), "keys/demo.seal", 0o600);
    let loaded = config::load(tmp.path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        loaded.config.partner("demo").unwrap().archive,
        Archive::Age {
            retention_days: 3653,
            ..
        }
    ));
}

#[test]
fn partner_overrides_defaults_and_defaults_are_range_checked() {
    let tmp = example();
    edit(
        tmp.path(),
        "jobs.d/demo.toml",
        "bank = \"demo-bank\"",
        "bank = \"demo-bank\"\nduplicate_window_days = 7",
    );
    edit(
        tmp.path(),
        "jobs.d/demo.toml",
        "[delivery]",
        "[delivery]\nattempts = 3",
    );
    let loaded = config::load(tmp.path()).unwrap();
    let c = &loaded.config;
    let demo = c.partner("demo").unwrap();
    assert_eq!(demo.duplicate_window, Duration::from_secs(7 * 86_400));
    assert_eq!(demo.delivery.attempts, 3);
    let bank = c.partner("demo-bank").unwrap();
    assert_eq!(bank.delivery.attempts, 10);
    assert_eq!(
        c.defaults.duplicate_window,
        Duration::from_secs(30 * 86_400)
    );

    edit(
        tmp.path(),
        "sluss.toml",
        "retry_max_seconds = 3600",
        "retry_max_seconds = 10",
    );
    let errs = errors(tmp.path());
    let e = problem(&errs, "is below retry_initial_seconds");
    assert_eq!(e.field, "defaults.retry_max_seconds");
}
