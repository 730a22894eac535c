//! Bulk files (`file tokenize|detokenize`, `POST /v1/files/tokenize`): CSV
//! and JSON Lines through the engine and back, byte fidelity, rejects
//! without values, resume after a kill, OpenPGP against gpg, one audit
//! record per run, and no value anywhere on disk but the encrypted columns.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{audit_query, fixture, key, Setup, BIN};

const CSV_COLUMNS: &str = "Email=email,Phone=phone,Name=name";
const JSONL_COLUMNS: &str =
    "$.profileData.Email=email,$.profileData.Phone=phone,$.profileData.Name=name";

/// Runs `tokenvault file ARGS… --config <config>`.
fn file(setup: &Setup, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("file")
        .args(args)
        .arg("--config")
        .arg(&setup.config)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    stderr
}

fn tokenize_csv(setup: &Setup, input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "tokenize",
        "--in",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--namespace",
        "retail",
        "--columns",
        CSV_COLUMNS,
        "--subject-column",
        "identity",
    ];
    args.extend_from_slice(extra);
    file(setup, &args)
}

fn detokenize(setup: &Setup, input: &Path, out: &Path, columns: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "detokenize",
        "--in",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--namespace",
        "retail",
        "--columns",
        columns,
        "--client",
        "admin",
        "--purpose",
        "support",
    ];
    args.extend_from_slice(extra);
    file(setup, &args)
}

fn csv_rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// What the vault stores for a value of each class of the test columns.
fn normalized(column: &str, value: &str) -> String {
    match column {
        "Email" => value.trim().to_lowercase(),
        "Phone" => value
            .chars()
            .filter(|c| *c == '+' || c.is_ascii_digit())
            .collect(),
        _ => value.trim().to_owned(),
    }
}

#[test]
pub(crate) fn csv_goes_through_tokenize_and_back_with_every_other_byte_kept() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let input = fixture("profiles-10.csv");
    let tokenized = dir.join("profiles.tok.csv");
    let stderr = ok(&tokenize_csv(&setup, &input, &tokenized, &[]));
    assert!(
        stderr.contains("tokenized 10 rows: 30 tokens created"),
        "{stderr}"
    );
    assert!(!dir.join("profiles.tok.csv.partial").exists());
    assert!(!dir.join("profiles.tok.csv.resume").exists());

    let before = csv_rows(&input);
    let after = csv_rows(&tokenized);
    assert_eq!(before.len(), 10);
    assert_eq!(after.len(), 10);
    let mut raw = fs::read(&tokenized).unwrap();
    for (old, new) in before.iter().zip(&after) {
        for (column, value) in old {
            if ["Email", "Phone", "Name"].contains(&column.as_str()) {
                assert_ne!(&new[column], value, "{column} was not tokenized");
                assert!(!new[column].is_empty());
            } else {
                assert_eq!(&new[column], value, "{column} changed");
            }
        }
        assert!(
            new["Email"].ends_with("@tok.retail.invalid"),
            "{}",
            new["Email"]
        );
        assert!(new["Phone"].starts_with('+'), "{}", new["Phone"]);
    }
    // Byte fidelity: putting the original cells back gives the input, byte
    // for byte (CRLF endings, quoted cells, a multi-line note, a cell
    // quoted without need).
    let original = fs::read(&input).unwrap();
    for (old, new) in before.iter().zip(&after) {
        for column in ["Email", "Phone", "Name"] {
            let quoted = if old[column].contains(',') {
                format!("\"{}\"", old[column])
            } else {
                old[column].clone()
            };
            let at = find(&raw, new[column].as_bytes()).expect("the token is in the output");
            raw.splice(at..at + new[column].len(), quoted.bytes());
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(&original)
    );

    // Back through detokenize, as a client allowed to, to the normalized
    // values; every other column as it was.
    let back = dir.join("profiles.back.csv");
    let stderr = ok(&detokenize(&setup, &tokenized, &back, CSV_COLUMNS, &[]));
    assert!(
        stderr.contains("detokenized 10 rows: 30 values revealed"),
        "{stderr}"
    );
    let revealed = csv_rows(&back);
    for (old, new) in before.iter().zip(&revealed) {
        for (column, value) in old {
            let want = match column.as_str() {
                "Email" | "Phone" | "Name" => normalized(column, value),
                _ => value.clone(),
            };
            assert_eq!(new[column], want, "{column}");
        }
        assert_eq!(new["tokenvault_reason"], "");
    }

    // A second run reuses every token: the same output.
    let again = dir.join("profiles.again.csv");
    let stderr = ok(&tokenize_csv(&setup, &input, &again, &[]));
    assert!(stderr.contains("0 tokens created, 30 reused"), "{stderr}");
    assert_eq!(fs::read(&again).unwrap(), fs::read(&tokenized).unwrap());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn json_lines_go_through_tokenize_and_back_numbers_and_all() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    // The profiles, and the profiles whose Phone is a JSON number.
    let mut lines = fs::read_to_string(fixture("profiles-10.jsonl")).unwrap();
    let numbers: Value = serde_json::from_slice(
        &fs::read(fixture("clevertap-upload-phone-as-number.json")).unwrap(),
    )
    .unwrap();
    for record in numbers["d"].as_array().unwrap() {
        lines.push_str(&serde_json::to_string(record).unwrap());
        lines.push('\n');
    }
    let input = dir.join("profiles.jsonl");
    fs::write(&input, &lines).unwrap();
    let count = lines.lines().count();
    let tokenized = dir.join("profiles.tok.jsonl.gz");
    let out = file(
        &setup,
        &[
            "tokenize",
            "--in",
            input.to_str().unwrap(),
            "--out",
            tokenized.to_str().unwrap(),
            "--namespace",
            "retail",
            "--columns",
            JSONL_COLUMNS,
            "--subject-column",
            "$.identity",
        ],
    );
    let stderr = ok(&out);
    assert!(
        stderr.contains(&format!("tokenized {count} rows")),
        "{stderr}"
    );
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(fs::File::open(&tokenized).unwrap()),
        &mut text,
    )
    .unwrap();
    let before: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let after: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(after.len(), count);
    for (old, new) in before.iter().zip(&after) {
        let (old_p, new_p) = (&old["profileData"], &new["profileData"]);
        for field in ["Email", "Phone", "Name"] {
            if old_p.get(field).is_some() {
                assert!(new_p[field].is_string(), "{field} becomes a string token");
                assert_ne!(new_p[field], old_p[field]);
            }
        }
        assert_eq!(new["identity"], old["identity"]);
        assert_eq!(new_p["Customer Type"], old_p["Customer Type"]);
    }
    // Every byte but the selected values is kept.
    let first_old = lines.lines().next().unwrap();
    let first_new = text.lines().next().unwrap();
    let mut restored = first_new.to_owned();
    for field in ["Email", "Phone", "Name"] {
        restored = restored.replace(
            &serde_json::to_string(&after[0]["profileData"][field]).unwrap(),
            &serde_json::to_string(&before[0]["profileData"][field]).unwrap(),
        );
    }
    assert_eq!(restored, first_old);

    let back = dir.join("profiles.back.jsonl");
    ok(&detokenize(&setup, &tokenized, &back, JSONL_COLUMNS, &[]));
    let revealed: Vec<Value> = fs::read_to_string(&back)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (old, new) in before.iter().zip(&revealed) {
        for field in ["Email", "Phone", "Name"] {
            let Some(value) = old["profileData"].get(field) else {
                continue;
            };
            let text = match value {
                Value::String(s) => s.clone(),
                other => format!("+{other}"),
            };
            assert_eq!(
                new["profileData"][field].as_str().unwrap(),
                normalized(field, &text),
                "{field}"
            );
        }
        assert!(new.get("tokenvault_reason").is_none());
    }
}

#[test]
pub(crate) fn rejected_rows_are_reported_by_number_and_reason_never_by_value() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let input = fixture("profiles-bad.csv");
    let out = dir.join("bad.tok.csv");
    let stderr = ok(&tokenize_csv(&setup, &input, &out, &[]));
    assert!(stderr.contains("tokenized 2 rows"), "{stderr}");
    assert!(stderr.contains("3 rows rejected"), "{stderr}");
    let report = fs::read_to_string(dir.join("bad.tok.csv.rejects.csv")).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "row,reason");
    assert_eq!(lines.len(), 4, "{report}");
    assert!(lines[1].starts_with("2,column Phone (phone): "), "{report}");
    assert!(lines[2].starts_with("3,column Email (email): "), "{report}");
    assert!(
        lines[3].starts_with("4,has 6 fields; the header has 8"),
        "{report}"
    );
    for value in [
        "not-a-phone",
        "Bo Li",
        "bo.li@example.com",
        "Cy Do",
        "Di Fu",
        "+15550100004",
    ] {
        assert!(!report.contains(value), "the report holds {value}");
        assert!(!stderr.contains(value), "stderr holds {value}");
    }
    // Nothing is written for a rejected row.
    let rows = csv_rows(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r["identity"].as_str()).collect();
    assert_eq!(ids, ["CUST-1", "CUST-5"]);

    // --max-rejects 0: the run stops, and nothing is published.
    let strict = dir.join("strict.tok.csv");
    let out = tokenize_csv(&setup, &input, &strict, &["--max-rejects", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("more than 0 rows were rejected"),
        "{stderr}"
    );
    assert!(!strict.exists());

    // Each run is one record: the file's digest, counts, classes, and the
    // columns as fingerprints.
    let records = audit_query(&setup, &["--action", "file_tokenize"]);
    assert_eq!(records.len(), 2, "{records:?}");
    let done = &records[0];
    assert_eq!(done["outcome"], "ok");
    assert_eq!(done["namespace"], "retail");
    let digest = sha256_hex(&fs::read(&input).unwrap());
    assert_eq!(done["file"]["sha256"], digest);
    assert_eq!(done["file"]["rows"], 2);
    assert_eq!(done["file"]["rejected"], 3);
    assert_eq!(done["file"]["created"], 6);
    assert_eq!(
        done["file"]["classes"],
        serde_json::json!(["email", "phone", "name"])
    );
    let unrecognized: Vec<&str> = done["unrecognized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(unrecognized.len(), 3);
    assert!(unrecognized.iter().all(|u| u.starts_with("column:")));
    assert_eq!(records[1]["outcome"], "error");
    assert_eq!(records[1]["reason"], "too_many_rejects");
    crate::support::assert_chain_verifies(&setup);
}

/// A run stopped by its rejects tokenizes nothing of the batch that
/// stopped it, though the batch before is written while the engine would
/// work on it: the run's record counts every token the run created.
#[test]
pub(crate) fn a_run_stopped_by_rejects_creates_no_tokens_past_its_record() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let input = dir.join("stops.csv");
    fs::write(
        &input,
        "identity,Email,Phone,Name\n\
         C1,first@example.com,+15550000001,One\n\
         C2,second@example.com,+15550000002,Two\n\
         C3,third@example.com,not a phone,Three\n\
         C4,fourth@example.com,+15550000004,Four\n\
         C5,fifth@example.com,+15550000005,Five\n\
         C6,sixth@example.com,+15550000006,Six\n",
    )
    .unwrap();
    let out = tokenize_csv(
        &setup,
        &input,
        &dir.join("stops.tok.csv"),
        &["--batch-rows", "2", "--max-rejects", "0"],
    );
    assert!(!out.status.success());
    let records = audit_query(&setup, &["--action", "file_tokenize"]);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["reason"], "too_many_rejects");
    assert_eq!(records[0]["file"]["created"], 6, "{records:?}");

    // The row read with the reject was not tokenized: its values are new.
    let fourth = dir.join("fourth.csv");
    fs::write(
        &fourth,
        "identity,Email,Phone,Name\nC4,fourth@example.com,+15550000004,Four\n",
    )
    .unwrap();
    let stderr = ok(&tokenize_csv(
        &setup,
        &fourth,
        &dir.join("fourth.tok.csv"),
        &[],
    ));
    assert!(
        stderr.contains("tokenized 1 rows: 3 tokens created, 0 reused"),
        "{stderr}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn a_withdrawn_or_unknown_token_gives_an_empty_cell_and_a_reason() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let tokenized = dir.join("p.tok.csv");
    ok(&tokenize_csv(
        &setup,
        &fixture("profiles-10.csv"),
        &tokenized,
        &[],
    ));
    let rows = csv_rows(&tokenized);
    let withdrawn = rows[1]["Email"].clone();
    let out = Command::new(BIN)
        .args([
            "consent",
            "set",
            "--namespace",
            "retail",
            "--token",
            &withdrawn,
            "--purpose",
            "support",
            "--withdraw",
            "--config",
        ])
        .arg(&setup.config)
        .output()
        .unwrap();
    ok(&out);
    // A list with a made-up token in the third row.
    let mut list = fs::read_to_string(&tokenized).unwrap();
    list = list.replacen(&rows[2]["Phone"], "+15550000000", 1);
    let input = dir.join("list.csv");
    fs::write(&input, &list).unwrap();
    let back = dir.join("list.back.csv");
    ok(&detokenize(&setup, &input, &back, CSV_COLUMNS, &[]));
    let revealed = csv_rows(&back);
    assert_eq!(revealed[1]["Email"], "");
    assert_eq!(revealed[1]["tokenvault_reason"], "Email:consent_withdrawn");
    assert_eq!(revealed[2]["Phone"], "");
    assert_eq!(revealed[2]["tokenvault_reason"], "Phone:not_found");
    assert_eq!(revealed[0]["tokenvault_reason"], "");
    assert_eq!(
        revealed[1]["Phone"],
        normalized("Phone", &csv_rows(&fixture("profiles-10.csv"))[1]["Phone"])
    );

    // A role without detokenize, or without the purpose: refused, nothing
    // published.
    for (client, purpose) in [("crm", "support"), ("sms", "support")] {
        let refused = dir.join(format!("refused-{client}.csv"));
        let out = Command::new(BIN)
            .args([
                "file",
                "detokenize",
                "--in",
                input.to_str().unwrap(),
                "--out",
                refused.to_str().unwrap(),
                "--namespace",
                "retail",
                "--columns",
                "Phone=phone",
                "--client",
                client,
                "--purpose",
                purpose,
                "--config",
            ])
            .arg(&setup.config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{client} was allowed");
        assert!(!refused.exists());
        assert!(!refused.with_extension("csv.partial").exists());
    }
}

#[test]
pub(crate) fn a_run_killed_at_a_random_moment_resumes_to_the_same_bytes() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let input = dir.join("big.csv");
    let mut text = String::from("identity,Email,Phone,Name,Note\n");
    // Some rows in every batch are rejected (an unparseable phone): the
    // resumed run must report each once, in order, as a whole run does.
    let rejected = |i: usize| i % 97 == 13;
    for i in 0..6000 {
        let phone = if rejected(i) {
            "not a phone".to_owned()
        } else {
            format!("+1555{i:07}")
        };
        text.push_str(&format!(
            "C{i},user{i}@example.com,{phone},\"Name, {i}\",\"n\n{i}\"\n"
        ));
    }
    let kept = (0..6000).filter(|&i| !rejected(i)).count();
    fs::write(&input, &text).unwrap();
    let interrupted = dir.join("interrupted.csv.gz");
    let batch = ["--batch-rows", "250"];
    // Killed (SIGKILL) after some batches are out: somewhere random within
    // the run, found by watching the checkpoint.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let wait_batches = 1 + seed % 10;
    let mut child = Command::new(BIN)
        .args([
            "file",
            "tokenize",
            "--in",
            input.to_str().unwrap(),
            "--out",
            interrupted.to_str().unwrap(),
            "--namespace",
            "retail",
            "--columns",
            CSV_COLUMNS,
            "--subject-column",
            "identity",
            batch[0],
            batch[1],
            "--config",
        ])
        .arg(&setup.config)
        .spawn()
        .unwrap();
    let resume = dir.join("interrupted.csv.gz.resume");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let rows = fs::read(&resume)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|c| c["counts"]["rows"].as_u64())
            .unwrap_or(0);
        if rows >= wait_batches as u64 * 250 || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        resume.exists(),
        "the run finished before it could be killed; make the file larger"
    );
    // Without --resume the leftovers are refused.
    let out = tokenize_csv(&setup, &input, &interrupted, &batch);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    let resumed = ok(&tokenize_csv(
        &setup,
        &input,
        &interrupted,
        &[batch[0], batch[1], "--resume"],
    ));
    assert!(!resume.exists());

    let whole = dir.join("whole.csv.gz");
    let uninterrupted = ok(&tokenize_csv(&setup, &input, &whole, &batch));
    assert_eq!(
        fs::read(&interrupted).unwrap(),
        fs::read(&whole).unwrap(),
        "a resumed run wrote other bytes than an uninterrupted one (killed after {wait_batches} batches)"
    );
    let report = |out: &Path| fs::read_to_string(format!("{}.rejects.csv", out.display())).unwrap();
    assert_eq!(
        report(&interrupted),
        report(&whole),
        "a resumed run reported other rejects than an uninterrupted one (killed after {wait_batches} batches)"
    );
    assert_eq!(report(&whole).lines().count(), 1 + 6000 - kept);
    // The resumed run's counts include the interrupted run's (its tokens
    // were all created by the two; the uninterrupted run found them all).
    for stderr in [&resumed, &uninterrupted] {
        let summary = stderr.lines().last().unwrap_or_default();
        assert!(
            summary.starts_with(&format!("tokenized {kept} rows: "))
                && summary.ends_with(&format!(" {} rows rejected", 6000 - kept)),
            "{stderr}"
        );
    }
    let mut plain = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(fs::File::open(&whole).unwrap()),
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain.matches("@tok.retail.invalid").count(), kept);

    // Again in the default batches (4,096 rows): a batch that large is
    // looked up and link-checked in parts read at once, which must answer
    // in order, as one read does.
    let again = dir.join("again.csv");
    let stderr = ok(&tokenize_csv(&setup, &input, &again, &[]));
    assert!(
        stderr.contains(&format!(
            "tokenized {kept} rows: 0 tokens created, {} reused",
            3 * kept
        )),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&again).unwrap(), plain);
}

/// A throwaway gpg home with one key pair (no passphrase).
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let gpg = Self { home };
        let out = gpg.run(&[
            "--batch",
            "--passphrase",
            "",
            "--quick-generate-key",
            "platform@example.com",
            "default",
            "default",
            "never",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        gpg
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--no-tty", "--quiet"])
            .args(args)
            .output()
            .expect("gpg (Debian package gnupg; .ci/run installs it)")
    }

    fn export(&self, dir: &Path, secret: bool) -> PathBuf {
        let (path, flag) = if secret {
            (dir.join("key.sec.asc"), "--export-secret-keys")
        } else {
            (dir.join("key.pub.asc"), "--export")
        };
        let out = self.run(&[
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--armor",
            flag,
            "platform@example.com",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(&path, &out.stdout).unwrap();
        path
    }
}

#[test]
fn an_encrypted_output_opens_with_gpg_and_a_gpg_list_opens_in_the_vault() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let gpg = Gpg::new();
    let public = gpg.export(dir, false);
    let input = fixture("profiles-10.csv");
    let encrypted = dir.join("upload.csv.pgp");
    ok(&tokenize_csv(
        &setup,
        &input,
        &encrypted,
        &["--encrypt-to", public.to_str().unwrap()],
    ));
    let plain = dir.join("upload.csv");
    ok(&tokenize_csv(&setup, &input, &plain, &[]));
    let tokens = fs::read(&plain).unwrap();
    let cipher = fs::read(&encrypted).unwrap();
    let first_token = csv_rows(&plain)[0]["Email"].clone();
    assert!(
        find(&cipher, first_token.as_bytes()).is_none(),
        "plaintext in the encrypted file"
    );
    let out = gpg.run(&["--batch", "--decrypt", encrypted.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, tokens, "gpg's plaintext is the tokenized file");

    // The other way: a list gpg encrypted to the operator's key.
    let secret = gpg.export(dir, true);
    let list = dir.join("list.csv.gpg");
    let out = gpg.run(&[
        "--batch",
        "--trust-model",
        "always",
        "--recipient",
        "platform@example.com",
        "--output",
        list.to_str().unwrap(),
        "--encrypt",
        plain.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = dir.join("list.back.csv");
    ok(&detokenize(
        &setup,
        &list,
        &back,
        CSV_COLUMNS,
        &[
            "--format",
            "csv",
            "--decrypt-with",
            secret.to_str().unwrap(),
        ],
    ));
    let revealed = csv_rows(&back);
    let original = csv_rows(&input);
    assert_eq!(revealed.len(), 10);
    assert_eq!(
        revealed[3]["Email"],
        normalized("Email", &original[3]["Email"])
    );
}

#[test]
fn a_canary_file_leaves_its_values_nowhere_on_disk() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let canaries: Vec<String> = fs::read_to_string(fixture("canaries.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let inbox = tempfile::tempdir().unwrap();
    let input = inbox.path().join("canaries.csv");
    let mut text = String::from("identity,Email,Phone,Name\n");
    for (i, chunk) in canaries.chunks(3).enumerate() {
        if let [email, phone, name] = chunk {
            text.push_str(&format!("{i},{email},{phone},{name}\n"));
        }
    }
    fs::write(&input, &text).unwrap();
    let out = dir.join("canaries.tok.csv");
    let stderr = ok(&tokenize_csv(&setup, &input, &out, &[]));
    assert!(stderr.contains("tokenized 333 rows"), "{stderr}");
    for path in walk(dir) {
        let bytes = fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        for canary in &canaries {
            assert!(
                !text.contains(&canary.to_lowercase()),
                "{} holds a canary value",
                path.display()
            );
        }
    }
    for canary in &canaries {
        assert!(!stderr.contains(canary.as_str()));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(walk(&path));
        } else {
            all.push(path);
        }
    }
    all
}

#[test]
fn the_http_surface_streams_a_file_for_a_client_that_may_tokenize() {
    let setup = Setup::new("");
    let server = setup.serve();
    let body = fs::read(fixture("profiles-10.csv")).unwrap();
    let url = server.url(&format!(
        "/v1/files/tokenize?namespace=retail&format=csv&columns={}&subject_column=identity",
        "Email%3Demail%2CPhone%3Dphone%2CName%3Dname"
    ));
    let send = |client: Option<&str>, body: Vec<u8>| {
        let mut request = crate::support::http().post(&url).body(body);
        if let Some(client) = client {
            request = request.bearer_auth(key(client));
        }
        request.send().unwrap()
    };
    let response = send(Some("crm"), body.clone());
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let streamed = response.bytes().unwrap();
    let text = String::from_utf8_lossy(&streamed);
    assert_eq!(text.matches("@tok.retail.invalid").count(), 10);
    assert!(!text.contains("olivia.nair0@example.com"));

    // The same file through the command line gives the same bytes.
    let out = setup.dir.path().join("cli.csv");
    ok(&tokenize_csv(
        &setup,
        &fixture("profiles-10.csv"),
        &out,
        &[],
    ));
    assert_eq!(fs::read(&out).unwrap(), streamed.to_vec());

    // Refusals: no key, a role without tokenize, a role without the class,
    // a rejected row (422 naming the row, never the value).
    assert_eq!(send(None, body.clone()).status().as_u16(), 401);
    assert_eq!(send(Some("sms"), body.clone()).status().as_u16(), 403);
    assert_eq!(send(Some("intake"), body.clone()).status().as_u16(), 403);
    let bad = send(Some("crm"), fs::read(fixture("profiles-bad.csv")).unwrap());
    assert_eq!(bad.status().as_u16(), 422);
    let error: Value = bad.json().unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("row 2"), "{message}");
    assert!(!message.contains("not-a-phone"), "{message}");
    assert!(error["error"]["request_id"].is_string());
    let bad_query = crate::support::http()
        .post(server.url("/v1/files/tokenize?namespace=retail"))
        .bearer_auth(key("crm"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(bad_query.status().as_u16(), 400);
}

#[test]
fn a_detokenization_budget_stops_a_list_and_nothing_is_published() {
    let setup = Setup::new("");
    let dir = setup.dir.path();
    let tokenized = dir.join("p.tok.csv");
    ok(&tokenize_csv(
        &setup,
        &fixture("profiles-10.csv"),
        &tokenized,
        &[],
    ));
    // `budgeted` may reveal 5 values a minute; the list holds 10 phones.
    let run = |client: &str, out: &Path| {
        Command::new(BIN)
            .args([
                "file",
                "detokenize",
                "--in",
                tokenized.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--namespace",
                "retail",
                "--columns",
                "Phone=phone",
                "--client",
                client,
                "--purpose",
                "sms_delivery",
                "--config",
            ])
            .arg(&setup.config)
            .output()
            .unwrap()
    };
    let over = dir.join("over.csv");
    let out = run("budgeted", &over);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("budget"), "{stderr}");
    assert!(!over.exists());
    assert!(!dir.join("over.csv.partial").exists());
    // The same list for a client without a budget: every phone, and the
    // email column (not asked for) stays a token.
    let fine = dir.join("fine.csv");
    ok(&run("sms", &fine));
    let rows = csv_rows(&fine);
    assert!(rows
        .iter()
        .all(|r| r["Phone"].starts_with('+') && r["tokenvault_reason"].is_empty()));
    assert!(rows
        .iter()
        .all(|r| r["Email"].ends_with("@tok.retail.invalid")));
    // A column of a class the role may not see answers not_found.
    let hidden = dir.join("hidden.csv");
    let out = Command::new(BIN)
        .args([
            "file",
            "detokenize",
            "--in",
            tokenized.to_str().unwrap(),
            "--out",
            hidden.to_str().unwrap(),
            "--namespace",
            "retail",
            "--columns",
            "Email=email",
            "--client",
            "sms",
            "--purpose",
            "sms_delivery",
            "--config",
        ])
        .arg(&setup.config)
        .output()
        .unwrap();
    ok(&out);
    let rows = csv_rows(&hidden);
    assert!(rows
        .iter()
        .all(|r| r["Email"].is_empty() && r["tokenvault_reason"] == "Email:not_found"));
}
