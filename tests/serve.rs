//! `salient serve` on loopback, queried by clients salient did not write: ADBC's Flight SQL
//! driver (Go, from Python) and InfluxData's `flightsql-dbapi` (pyarrow's C++ Flight client);
//! both installed by tests/run.sh from tests/requirements.txt.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-6f1d";

/// A running `salient serve`, killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    uri: String,
    /// Its log, one JSON object per line, as it comes.
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Waits (up to 30 s) for a log line holding every one of `parts`, and returns it.
    fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} in:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's peak resident memory (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib / 1024
    }
}

/// Starts the server on `listen` (port 0: a free one) and waits for its "listening on" line.
fn start_on(listen: &str, args: &[&str], token: Option<&str>) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_salient"));
    command
        .args(["--log-format", "json", "serve", "--listen", listen])
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
    // Keep reading the log so the server never blocks on a full pipe.
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Server { child, uri, log }
}

fn start(args: &[&str], token: Option<&str>) -> Server {
    start_on("127.0.0.1:0", args, token)
}

/// Runs `tests/interop/SCRIPT ARGS` and returns its output, failing with both streams if it
/// exits non-zero.
fn client(script: &str, args: &[&str]) -> String {
    let path = common::repo_path("tests/interop").join(script);
    let output = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("python3 must be installed (tests/run.sh checks)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The rest of the first line of `stdout` that starts with `prefix`.
fn line(stdout: &str, prefix: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
        .trim()
        .to_string()
}

/// `salient sql`'s cluster of every row of `table` (`NAME=PATH`), by id.
fn local_clusters(model: &str, table: &str) -> BTreeMap<String, i64> {
    let local = common::salient(&[
        "sql",
        "--model",
        model,
        "--table",
        table,
        "--format",
        "json",
        "SELECT id, cluster_embed(image)['cluster_id'] AS cluster_id FROM t ORDER BY id",
    ]);
    assert!(local.status.success(), "{}", common::stderr(&local));
    let local: Vec<serde_json::Value> = serde_json::from_slice(&local.stdout).unwrap();
    local
        .iter()
        .map(|row| {
            (
                row["id"].as_i64().unwrap().to_string(),
                row["cluster_id"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The clusters a client printed on its `query` line.
fn served_clusters(stdout: &str) -> BTreeMap<String, i64> {
    serde_json::from_str(&line(stdout, "query ")).unwrap()
}

fn served_model(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (model, data) = common::tiny_model(dir, salient::model::Architecture::SmallCnn, false, 192);
    // A table whose row id 7 is not an image.
    let bad = dir.join("bad.parquet");
    common::write_table_with_bad_row(&bad, 0, 7);
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
    let stdout = client("flight_sql_client.py", &[&server.uri, TOKEN]);

    // Every row equals `salient sql` on the same table.
    let served = served_clusters(&stdout);
    assert_eq!(served.len(), 192);
    assert_eq!(served, local_clusters(&model_arg, &t));

    assert_eq!(line(&stdout, "prepared "), "10");
    assert_eq!(line(&stdout, "tables "), r#"["bad", "t"]"#);
    assert!(line(&stdout, "schema ").contains("\"image\""), "{stdout}");

    for statement in ["create", "copy", "insert", "set", "drop"] {
        let message = line(&stdout, &format!("refused {statement} "));
        assert!(
            message.contains("not supported"),
            "{statement}: {message}\n{stdout}"
        );
    }
    let bad_image = line(&stdout, "bad_image ");
    assert!(bad_image.contains("row id 7"), "{bad_image}");

    assert_eq!(line(&stdout, "concurrent "), "320 320");
    assert!(
        line(&stdout, "token wrong ").contains("Unauthenticated"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "token empty ").contains("Unauthenticated"),
        "{stdout}"
    );

    // 16 clients x 20 queries kept memory bounded.
    let peak = server.peak_rss_mib();
    assert!(peak < 1024, "peak RSS {peak} MiB after the load");
}

#[test]
fn a_second_client_gets_the_same_rows_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (model, target, _) = served_model(dir.path());
    let (cert, key) = self_signed_certificate(dir.path());
    let model_arg = model.display().to_string();
    let t = format!("t={}", target.display());
    // The table comes from a catalogue file, by a path relative to it.
    let catalog = target.parent().unwrap().join("catalog.toml");
    let file_name = target.file_name().unwrap().to_string_lossy();
    std::fs::write(&catalog, format!("[tables]\nt = \"{file_name}\"\n")).unwrap();
    let catalog = catalog.display().to_string();
    let server = start(
        &[
            "--model",
            &model_arg,
            "--catalog",
            &catalog,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        Some(TOKEN),
    );
    assert!(server.uri.starts_with("grpc+tls://"), "{}", server.uri);
    // The certificate names localhost.
    let uri = server.uri.replace("127.0.0.1", "localhost");
    let stdout = client("flightsql_dbapi_client.py", &[&uri, TOKEN, &cert]);

    assert_eq!(served_clusters(&stdout), local_clusters(&model_arg, &t));
    assert_eq!(line(&stdout, "tables "), r#"["t"]"#);
    assert!(
        line(&stdout, "wrong_token ").contains("nauthenticated"),
        "{stdout}"
    );
    // The script fails if either call succeeds; these are the reasons the client gave.
    assert!(
        line(&stdout, "untrusted ")
            .to_lowercase()
            .contains("certificate"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "plaintext ").contains("navailable"),
        "{stdout}"
    );
}

/// A self-signed certificate for localhost and 127.0.0.1 (openssl), as PEM files.
fn self_signed_certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed (tests/run.sh checks)");
    assert!(out.status.success(), "{}", common::stderr(&out));
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn a_killed_client_frees_its_slot_and_a_killed_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (model, target, _) = served_model(dir.path());
    let model_arg = model.display().to_string();
    let t = format!("t={}", target.display());
    // One query at a time: a slot the killed client kept would stop the next query.
    let args = [
        "--model",
        &model_arg,
        "--table",
        &t,
        "--max-concurrent-queries",
        "1",
        "--query-timeout",
        "60s",
    ];
    let server = start(&args, Some(TOKEN));
    assert_eq!(health(&server.uri), "Serving");

    // A client killed (SIGKILL) while its result streams.
    let mut stalled = Command::new("python3")
        .arg(common::repo_path("tests/interop/flight_sql_stall.py"))
        .args([&server.uri, TOKEN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(stalled.stdout.take().unwrap())
        .lines()
        .next()
        .expect("flight_sql_stall.py ended before streaming")
        .unwrap();
    assert!(first.starts_with("streaming "), "{first}");
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    // The server noticed, logged the query as cancelled part-way, and freed its slot.
    let cancelled = server.wait_for_log(&[r#""message":"query""#, r#""outcome":"cancelled""#]);
    assert!(!cancelled.contains(r#""rows":0,"#), "{cancelled}");
    let stdout = client("flightsql_dbapi_client.py", &[&server.uri, TOKEN]);
    let expected = local_clusters(&model_arg, &t);
    assert_eq!(served_clusters(&stdout), expected);

    // Killed outright and started again on the same port, it answers as before.
    let address = server.uri.trim_start_matches("grpc://").to_string();
    drop(server);
    let server = start_on(&address, &args, Some(TOKEN));
    assert_eq!(health(&server.uri), "Serving");
    let stdout = client("flightsql_dbapi_client.py", &[&server.uri, TOKEN]);
    assert_eq!(served_clusters(&stdout), expected);
}

/// The server's overall status from the standard gRPC health service, asked without a token.
fn health(uri: &str) -> String {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(uri.replace("grpc://", "http://"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        format!("{:?}", reply.status())
    })
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
