//! `sluss inspect [--json] FILE`: show what a payment file is — kind, seal, routing keys,
//! structural problems with line numbers. Only reads the file (never changes it); all the
//! recognising happens in `sluss::formats`. Exit 0: no problems; 1: problems; 2: I/O error.

use anyhow::Context;
use sluss::formats::{self, Recognition};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Print exactly one JSON object on stdout (kind, sealed, routing, problems, records).
    #[arg(long)]
    json: bool,
    /// The file to inspect.
    file: PathBuf,
}

pub fn run(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let file = File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let found = formats::recognise(BufReader::new(file))
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &found)?;
        writeln!(out)?;
    } else {
        write_human(&mut out, &a.file, &found)?;
    }
    Ok(if found.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn write_human(
    out: &mut impl Write,
    path: &std::path::Path,
    r: &Recognition,
) -> std::io::Result<()> {
    writeln!(out, "file:     {}", path.display())?;
    writeln!(out, "kind:     {}", r.kind)?;
    writeln!(
        out,
        "sealed:   {}",
        if r.sealed {
            "yes (TK00/TK99; check it with `sluss verify`)"
        } else {
            "no"
        }
    )?;
    writeln!(out, "lines:    {}", r.records)?;
    let k = &r.routing;
    if !k.bankgiro.is_empty() {
        writeln!(out, "bankgiro: {}", k.bankgiro.join(", "))?;
    }
    if let Some(v) = &k.customer_number {
        writeln!(out, "customer number: {v}")?;
    }
    if let Some(v) = &k.report_code {
        writeln!(out, "report code: {v}")?;
    }
    if !k.account.is_empty() {
        writeln!(out, "account:  {}", k.account.join(", "))?;
    }
    if let Some(v) = &k.message_id {
        writeln!(out, "message id: {v}")?;
    }
    if let Some(v) = &k.original_message_id {
        writeln!(out, "original message id: {v}")?;
    }
    if let Some(v) = k.test {
        writeln!(
            out,
            "test file: {}",
            if v { "yes" } else { "no (production)" }
        )?;
    }
    if r.problems.is_empty() {
        writeln!(out, "problems: none")?;
    } else {
        writeln!(out, "problems: {}", r.problems.len())?;
        for p in &r.problems {
            writeln!(out, "  {p}")?;
        }
    }
    Ok(())
}
