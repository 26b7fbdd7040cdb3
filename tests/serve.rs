//! `salient serve` on loopback, queried by clients salient did not write (ADBC's Flight SQL
//! driver from Python; installed by tests/run.sh from tests/requirements.txt).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::ImageEncoding;

const TOKEN: &str = "test-token-6f1d";

/// A running `salient serve`, killed when dropped.
struct Server {
    child: Child,
    uri: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on a free loopback port and waits for its "listening on" line.
fn start(args: &[&str], token: Option<&str>) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_salient"));
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("SALIENT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match token {
        Some(token) => command.env("SALIENT_SERVE_TOKEN", token),
        None => command.env_remove("SALIENT_SERVE_TOKEN"),
    };
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let uri = loop {
        let line = lines
            .next()
            .expect("salient serve exited before listening")
            .unwrap();
        if let Some(address) = line.split("listening on ").nth(1) {
            break address.trim().to_string();
        }
    };
    // Keep draining the logs so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, uri }
}

fn served_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (model, data) = common::tiny_model(dir, salient::model::Architecture::SmallCnn, false, 192);
    // A table whose row 7 is not an image.
    let bad = dir.join("bad.parquet");
    let mut images: Vec<Option<Vec<u8>>> = (0..10u8)
        .map(|i| Some(common::png_gray(&common::gray_pattern(28, 28, i), 28, 28)))
        .collect();
    images[7] = Some(b"definitely not an image".to_vec());
    let ids: Vec<i64> = (0..10).collect();
    common::write_table(&bad, &ids, &images, None, ImageEncoding::Binary);
    (model, data.target, bad)
}

#[test]
fn adbc_clients_query_cluster_embed_with_a_token_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (model, target, bad) = served_model(dir.path());
    let model_arg = model.display().to_string();
    let t = format!("t={}", target.display());
    let b = format!("bad={}", bad.display());
    let server = start(
        &["--model", &model_arg, "--table", &t, "--table", &b],
        Some(TOKEN),
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/flight_sql_client.py"
    );
    let output = Command::new("python3")
        .args([script, &server.uri, TOKEN])
        .output()
        .expect("python3 must be installed (tests/run.sh checks)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "flight_sql_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |prefix: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
            .trim()
            .to_string()
    };

    // Every row equals `salient sql` on the same table.
    let served: std::collections::BTreeMap<String, i64> =
        serde_json::from_str(&line("query ")).unwrap();
    let local = common::salient(&[
        "sql",
        "--model",
        &model_arg,
        "--table",
        &t,
        "--format",
        "json",
        "SELECT id, cluster_embed(image)['cluster_id'] AS cluster_id FROM t ORDER BY id",
    ]);
    assert!(local.status.success(), "{}", common::stderr(&local));
    let local: Vec<serde_json::Value> = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(served.len(), 192);
    assert_eq!(local.len(), served.len());
    for row in &local {
        let id = row["id"].as_i64().unwrap().to_string();
        assert_eq!(served[&id], row["cluster_id"].as_i64().unwrap(), "row {id}");
    }

    assert_eq!(line("prepared "), "10");
    assert_eq!(line("tables "), r#"["bad", "t"]"#);
    assert!(line("schema ").contains("\"image\""), "{stdout}");

    for (statement, expected) in [
        ("create", "not supported"),
        ("copy", "not supported"),
        ("insert", "not supported"),
        ("set", "not supported"),
        ("drop", "not supported"),
    ] {
        let message = line(&format!("refused {statement} "));
        assert!(
            message.contains(expected),
            "{statement}: {message}\n{stdout}"
        );
    }
    let bad_image = line("bad_image ");
    assert!(bad_image.contains("row id 7"), "{bad_image}");

    assert_eq!(line("concurrent "), "320 320");
    assert!(line("token wrong ").contains("Unauthenticated"), "{stdout}");
    assert!(line("token empty ").contains("Unauthenticated"), "{stdout}");
}

/// Runs `salient serve ARGS` with `token` (or none) in the environment, expects it to refuse to
/// start, and returns its error output.
fn refused_at_start(args: &[&str], token: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_salient"));
    command.arg("serve").args(args);
    match token {
        Some(token) => command.env("SALIENT_SERVE_TOKEN", token),
        None => command.env_remove("SALIENT_SERVE_TOKEN"),
    };
    let out = command.output().unwrap();
    assert!(!out.status.success(), "serve {args:?} started");
    common::stderr(&out)
}

#[test]
fn refuses_to_serve_without_a_token_except_on_loopback_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("no-model").display().to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "\n").unwrap();
    let token_file = token_file.display().to_string();

    for (args, token, expected) in [
        // No token, no --no-auth.
        (vec!["--model", &model], None, "no token"),
        // --no-auth on an address other machines can reach.
        (
            vec!["--model", &model, "--no-auth", "--listen", "0.0.0.0:0"],
            None,
            "only a loopback address may run without",
        ),
        // --no-auth together with a token.
        (
            vec!["--model", &model, "--no-auth"],
            Some(TOKEN),
            "exclude each other",
        ),
        // An empty token file.
        (
            vec!["--model", &model, "--token-file", &token_file],
            None,
            "the token is empty",
        ),
    ] {
        let stderr = refused_at_start(&args, token);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
