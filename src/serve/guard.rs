//! What a served query may do: read the served tables and nothing else ([`ServedTablesOnly`]),
//! within a time, size and concurrency budget ([`QueryLimits`]).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{plan_err, DataFusionError, Result as DFResult};
use datafusion::datasource::source_as_provider;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::TableSource;
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    execute_stream, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// The calling client, put in each call's session for the query log.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub address: String,
}

/// Refuses plans that write (DML, DDL, `COPY`, statements) and plans that scan any table
/// provider but the served ones. Runs on every plan that executes, however it was made (SQL,
/// a prepared statement, a Substrait plan that names local files).
#[derive(Debug)]
pub struct ServedTablesOnly {
    providers: HashSet<usize>,
    names: Vec<String>,
}

fn provider_key(provider: &Arc<dyn TableProvider>) -> usize {
    Arc::as_ptr(provider) as *const () as usize
}

fn source_key(source: &Arc<dyn TableSource>) -> Option<usize> {
    source_as_provider(source).ok().map(|p| provider_key(&p))
}

impl ServedTablesOnly {
    /// Every table registered in `ctx`, and the tables that views among them scan.
    pub async fn of_context(ctx: &SessionContext) -> Result<Self> {
        let mut providers = HashSet::new();
        let mut names = Vec::new();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table in schema.table_names() {
                    let provider = schema
                        .table(&table)
                        .await
                        .map_err(|e| Error::Invalid(format!("table {table}: {e}")))?;
                    let Some(provider) = provider else { continue };
                    providers.insert(provider_key(&provider));
                    names.push(table.clone());
                    // Views (and DataFrames registered as tables) scan other providers.
                    if let Some(plan) = provider.get_logical_plan() {
                        plan.apply_with_subqueries(|node| {
                            if let LogicalPlan::TableScan(scan) = node {
                                providers.extend(source_key(&scan.source));
                            }
                            Ok(TreeNodeRecursion::Continue)
                        })
                        .map_err(|e| Error::Invalid(format!("table {table}: {e}")))?;
                    }
                }
            }
        }
        names.sort();
        Ok(Self { providers, names })
    }
}

impl AnalyzerRule for ServedTablesOnly {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DFResult<LogicalPlan> {
        plan.apply_with_subqueries(|node| {
            match node {
                LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Statement(_) => {
                    return plan_err!("this server is read-only: {} is refused", node.display());
                }
                LogicalPlan::TableScan(scan) => {
                    let served =
                        source_key(&scan.source).is_some_and(|k| self.providers.contains(&k));
                    if !served {
                        return plan_err!(
                            "table `{}` is not served here (served: {})",
                            scan.table_name,
                            self.names.join(", ")
                        );
                    }
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "salient_served_tables_only"
    }
}

/// The per-query budget: a slot among `slots`, `timeout` from the start of the result stream
/// to its end, and at most `max_result_bytes` of results. Applied as a physical optimizer rule
/// that wraps the finished plan in [`LimitedExec`].
#[derive(Clone, Debug)]
pub struct QueryLimits {
    pub slots: Arc<Semaphore>,
    pub timeout: Duration,
    pub max_result_bytes: u64,
}

impl PhysicalOptimizerRule for QueryLimits {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if plan.is::<LimitedExec>() {
            return Ok(plan);
        }
        Ok(Arc::new(LimitedExec::new(plan, self.clone())))
    }

    fn name(&self) -> &str {
        "salient_query_limits"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A query's root: one output partition (the input's, coalesced) whose stream waits for a
/// slot, then enforces the time and size limits and logs the query when it ends.
#[derive(Debug)]
pub struct LimitedExec {
    input: Arc<dyn ExecutionPlan>,
    limits: QueryLimits,
    properties: Arc<PlanProperties>,
}

impl LimitedExec {
    fn new(input: Arc<dyn ExecutionPlan>, limits: QueryLimits) -> Self {
        let mut equivalences = input.equivalence_properties().clone();
        if input.output_partitioning().partition_count() > 1 {
            equivalences.clear_orderings();
            equivalences.clear_per_partition_constants();
        }
        let properties = PlanProperties::new(
            equivalences,
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            limits,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for LimitedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "LimitedExec: timeout={:?}, max_result_bytes={}",
            self.limits.timeout, self.limits.max_result_bytes
        )
    }
}

impl ExecutionPlan for LimitedExec {
    fn name(&self) -> &str {
        "LimitedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "LimitedExec has exactly one child".into(),
            ));
        }
        Ok(Arc::new(Self::new(children.remove(0), self.limits.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "LimitedExec has one partition, asked for {partition}"
            )));
        }
        let client = context
            .session_config()
            .get_extension::<ClientInfo>()
            .map_or_else(|| "unknown".to_string(), |c| c.address.clone());
        // The whole tree (one_line would show the root node only).
        let plan = datafusion::physical_plan::displayable(self.input.as_ref())
            .indent(false)
            .to_string();
        let plan_sha256 = hex::encode(&Sha256::digest(plan.as_bytes())[..8]);
        let slots = Arc::clone(&self.limits.slots);
        Ok(Box::pin(LimitedStream {
            schema: self.input.schema(),
            slot: Slot::Waiting(Box::pin(slots.acquire_owned())),
            // Started only once the query holds a slot: a plan with several partitions
            // spawns its work as soon as it is executed.
            start: Some((Arc::clone(&self.input), context)),
            input: None,
            deadline: Box::pin(tokio::time::sleep(self.limits.timeout)),
            timeout: self.limits.timeout,
            max_result_bytes: self.limits.max_result_bytes,
            log: QueryLog {
                client,
                plan_sha256,
                started: Instant::now(),
                rows: 0,
                bytes: 0,
                outcome: "cancelled",
            },
            done: false,
        }))
    }
}

type Acquire = Pin<
    Box<
        dyn std::future::Future<
                Output = std::result::Result<OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send,
    >,
>;

enum Slot {
    Waiting(Acquire),
    Held(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// One line per query, written when its stream ends or is dropped (a cancelled or
/// disconnected client drops it).
struct QueryLog {
    client: String,
    plan_sha256: String,
    started: Instant,
    rows: u64,
    bytes: u64,
    outcome: &'static str,
}

impl Drop for QueryLog {
    fn drop(&mut self) {
        tracing::info!(
            client = %self.client,
            plan_sha256 = %self.plan_sha256,
            rows = self.rows,
            bytes = self.bytes,
            seconds = self.started.elapsed().as_secs_f64(),
            outcome = self.outcome,
            "query"
        );
    }
}

struct LimitedStream {
    schema: SchemaRef,
    slot: Slot,
    start: Option<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)>,
    input: Option<SendableRecordBatchStream>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    max_result_bytes: u64,
    log: QueryLog,
    done: bool,
}

impl LimitedStream {
    fn fail(
        &mut self,
        outcome: &'static str,
        message: String,
    ) -> Poll<Option<DFResult<RecordBatch>>> {
        self.done = true;
        self.log.outcome = outcome;
        Poll::Ready(Some(Err(DataFusionError::ResourcesExhausted(message))))
    }
}

impl Stream for LimitedStream {
    type Item = DFResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let message = format!(
                "the query ran longer than the server's limit of {}",
                humantime::format_duration(self.timeout)
            );
            return self.fail("timeout", message);
        }
        if let Slot::Waiting(acquire) = &mut self.slot {
            match acquire.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(permit)) => self.slot = Slot::Held(permit),
                Poll::Ready(Err(_)) => {
                    return self.fail("shutdown", "the server is shutting down".into())
                }
            }
        }
        if let Some((plan, context)) = self.start.take() {
            match execute_stream(plan, context) {
                Ok(stream) => self.input = Some(stream),
                Err(e) => {
                    self.done = true;
                    self.log.outcome = "error";
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        let Some(input) = self.input.as_mut() else {
            return Poll::Ready(None);
        };
        match input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.log.rows += batch.num_rows() as u64;
                self.log.bytes += result_bytes(&batch);
                if self.log.bytes > self.max_result_bytes {
                    let message = format!(
                        "the result is larger than the server's limit of {} bytes; add a LIMIT \
                         or a WHERE clause",
                        self.max_result_bytes
                    );
                    return self.fail("too_large", message);
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                self.log.outcome = "error";
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                self.log.outcome = "ok";
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl RecordBatchStream for LimitedStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// The bytes of Arrow data a batch carries (a slice counts its rows only, not the buffers it
/// shares with the rest of its array).
fn result_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}
