//! Throughput of `cluster_embed` over Arrow Flight SQL (`salient serve`) against `salient sql`
//! on the same model, table and query, in one run:
//! 1. `salient sql`: the query collected in an open in-process session;
//! 2. Flight SQL, one client: a loopback server in this process (on its own runtime, with a
//!    token, as `salient serve` runs) and arrow-flight's Rust Flight SQL client reading the
//!    whole result;
//! 3. Flight SQL, four clients at once, each running the same query; throughput is all their
//!    rows over the wall time.
//!
//! The three passes alternate within each repeat, so each ratio comes from back-to-back runs
//! (the machine's speed drifts over minutes); the report gives medians over the repeats.
//!
//!     cargo bench --bench bench_serve -- MODEL_DIR TABLE.parquet [REPEATS]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use salient::serve::{Auth, ServeOptions};

const QUERY: &str = "SELECT id, cluster_embed(image) AS c FROM t";
const TOKEN: &str = "bench-token";
const CLIENTS: usize = 4;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `QUERY` as one Flight SQL client and returns the rows it received.
async fn flight_rows(uri: String) -> anyhow::Result<usize> {
    let channel = tonic::transport::Endpoint::from_shared(uri)?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {TOKEN}"));
    let info = client.execute(QUERY.to_string(), None).await?;
    let mut rows = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
        let mut stream = client.do_get(ticket).await?;
        while let Some(batch) = stream.try_next().await? {
            rows += batch.num_rows();
        }
    }
    Ok(rows)
}

/// `clients` clients at once, each on its own task; returns all their rows.
async fn flight_clients(uri: &str, clients: usize) -> anyhow::Result<usize> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(flight_rows(uri.to_string())))
        .collect();
    let mut rows = 0;
    for task in tasks {
        rows += task.await??;
    }
    Ok(rows)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let model = PathBuf::from(args.next().context("MODEL_DIR")?);
    let table = PathBuf::from(args.next().context("TABLE.parquet")?);
    let repeats: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let model_spec = model.display().to_string();
    let table_spec = format!("t={}", table.display());

    // 1. `salient sql`'s session.
    let shell = salient::shell::open(
        std::slice::from_ref(&model_spec),
        std::slice::from_ref(&table_spec),
    )?;

    // 2. and 3. A loopback server on its own runtime, as `salient serve` runs it, with room
    // for the whole result.
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse()?,
        auth: Auth::token(TOKEN, "bench")?,
        max_concurrent_queries: CLIENTS,
        max_result_bytes: 1 << 40,
        ..ServeOptions::default()
    };
    let server_runtime = salient::sql::runtime()?;
    let (state, listener, address) = server_runtime.block_on(async {
        let state = salient::serve::served_state(
            Arc::clone(&shell.models),
            std::slice::from_ref(&table_spec),
            &options,
        )
        .await?;
        let (listener, address) = salient::serve::bind(&options).await?;
        Ok::<_, salient::Error>((state, listener, address))
    })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_runtime.spawn(async move {
        salient::serve::serve(state, listener, &options, async {
            let _ = stopped.await;
        })
        .await
    });
    let uri = format!("http://{address}");
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let (mut over_sql, mut over_one) = (Vec::new(), Vec::new());
    let mut rows = 0;
    for repeat in 0..=repeats {
        let start = Instant::now();
        let batches =
            shell
                .runtime
                .block_on(salient::sql::execute(&shell.ctx, &shell.models, QUERY))?;
        let sql = start.elapsed().as_secs_f64();
        rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
        drop(batches);

        let start = Instant::now();
        let one_rows = client_runtime.block_on(flight_clients(&uri, 1))?;
        let one = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let four_rows = client_runtime.block_on(flight_clients(&uri, CLIENTS))?;
        let four = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            one_rows == rows && four_rows == CLIENTS * rows,
            "Flight SQL returned {one_rows} and {four_rows} rows, SQL {rows}"
        );
        // Repeat 0 warms everything up.
        if repeat > 0 {
            let throughputs = [
                rows as f64 / sql,
                rows as f64 / one,
                four_rows as f64 / four,
            ];
            for (t, throughput) in times.iter_mut().zip(throughputs) {
                t.push(throughput);
            }
            over_sql.push(throughputs[1] / throughputs[0]);
            over_one.push(throughputs[2] / throughputs[1]);
        }
    }
    let _ = stop.send(());
    server_runtime.block_on(server)??;

    let [sql, one, four] = times.map(median);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "`{QUERY}` on {rows} rows of {} with {}; {cores} cores ({}); medians of {repeats}",
        table.display(),
        model.display(),
        salient::device::cpu_model()
    );
    println!(
        "{:<44} {:>10.0} rows/s",
        "salient sql (in-process session)", sql
    );
    println!("{:<44} {:>10.0} rows/s", "Flight SQL, 1 client", one);
    println!(
        "{:<44} {:>10.0} rows/s",
        format!("Flight SQL, {CLIENTS} clients together"),
        four
    );
    let show = |v: &[f64]| v.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>();
    println!(
        "Flight SQL 1 client / salient sql: {:.2} (repeats {:?}; target >= 0.8)",
        median(over_sql.clone()),
        show(&over_sql)
    );
    println!(
        "Flight SQL {CLIENTS} clients / 1 client: {:.2} (repeats {:?}; target >= 0.9)",
        median(over_one.clone()),
        show(&over_one)
    );
    Ok(())
}
