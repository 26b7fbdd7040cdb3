//! Statement execution: parsing, the field-access rewrite, and `COPY … TO` made atomic
//! (a temporary file beside the target, renamed on success) with the model metadata.

use datafusion::prelude::SessionContext;

use super::*;

/// Executes one or more `;`-separated SQL statements and returns the rows of the last one.
/// `COPY … TO` a Parquet file is made atomic (written to a temporary file next to the target,
/// renamed when complete) and carries the `salient.model` metadata of the session's models.
pub async fn execute(
    ctx: &SessionContext,
    models: &ModelSet,
    sql: &str,
) -> crate::Result<Vec<arrow::array::RecordBatch>> {
    use datafusion::sql::parser::{DFParser, Statement};
    let statements = DFParser::parse_sql(sql).map_err(|e| crate::Error::Invalid(e.to_string()))?;
    let mut last = Vec::new();
    for mut statement in statements {
        rewrite_field_access(&mut statement);
        let mut copy_target = None;
        let statement = match statement {
            Statement::CopyTo(_) if is_distributed(ctx) => {
                return Err(crate::Error::Invalid(
                    "COPY is not available with --scheduler: Ballista's executors would write the file on their own machines, where salient cannot make it atomic; SELECT the rows (--format json or csv), or run `salient embed` for Parquet output".into(),
                ));
            }
            Statement::CopyTo(mut copy) => {
                copy_target = Some(prepare_copy(&mut copy, models)?);
                Statement::CopyTo(copy)
            }
            other => other,
        };
        let result = run_statement(ctx, statement).await;
        last = match (result, copy_target) {
            (Ok(batches), None) => batches,
            (Ok(batches), Some(target)) => {
                target.commit()?;
                batches
            }
            (Err(e), Some(target)) => {
                target.abandon();
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
    }
    Ok(last)
}

/// Whether `ctx` runs its queries on a Ballista cluster (its configuration has Ballista's
/// settings).
fn is_distributed(ctx: &SessionContext) -> bool {
    ctx.state()
        .config()
        .options()
        .entries()
        .iter()
        .any(|e| e.key.starts_with("ballista."))
}

/// DataFusion 55 plans `expr['field']` but refuses `expr.field` on a function result ("Dot
/// access not supported for non-string expr"). Users write `cluster_embed(image).cluster_id`, so
/// such accesses are rewritten to the bracket form before planning.
fn rewrite_field_access(statement: &mut datafusion::sql::parser::Statement) {
    use datafusion::sql::parser::{CopyToSource, Statement};
    use datafusion::sql::sqlparser::ast::{
        visit_expressions_mut, AccessExpr, Expr as SqlExpr, Value, ValueWithSpan,
    };
    use datafusion::sql::sqlparser::tokenizer::Span;
    use std::ops::ControlFlow;
    fn fix(e: &mut SqlExpr) -> ControlFlow<()> {
        if let SqlExpr::CompoundFieldAccess { root, access_chain } = e {
            if matches!(**root, SqlExpr::Function(_) | SqlExpr::Nested(_)) {
                for access in access_chain.iter_mut() {
                    if let AccessExpr::Dot(SqlExpr::Identifier(ident)) = access {
                        *access = AccessExpr::Dot(SqlExpr::Value(ValueWithSpan {
                            value: Value::SingleQuotedString(ident.value.clone()),
                            span: Span::empty(),
                        }));
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
    match statement {
        Statement::Statement(s) => {
            let _ = visit_expressions_mut(s.as_mut(), fix);
        }
        Statement::CopyTo(copy) => {
            if let CopyToSource::Query(query) = &mut copy.source {
                let _ = visit_expressions_mut(query.as_mut(), fix);
            }
        }
        Statement::Explain(explain) => rewrite_field_access(&mut explain.statement),
        _ => {}
    }
}

async fn run_statement(
    ctx: &SessionContext,
    statement: datafusion::sql::parser::Statement,
) -> crate::Result<Vec<arrow::array::RecordBatch>> {
    let state = ctx.state();
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(datafusion_error)?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(datafusion_error)?;
    df.collect().await.map_err(datafusion_error)
}

/// Where a `COPY` really writes, and where its output goes when it succeeds.
struct CopyTarget {
    temporary: std::path::PathBuf,
    target: std::path::PathBuf,
}

impl CopyTarget {
    fn commit(self) -> crate::Result<()> {
        std::fs::rename(&self.temporary, &self.target)
            .map_err(|e| crate::Error::io(&self.target, e))
    }

    fn abandon(self) {
        let _ = std::fs::remove_file(&self.temporary);
        let _ = std::fs::remove_dir_all(&self.temporary);
    }
}

/// Redirects a COPY to a temporary path beside its target and adds the model metadata.
fn prepare_copy(
    copy: &mut datafusion::sql::parser::CopyToStatement,
    models: &ModelSet,
) -> crate::Result<CopyTarget> {
    use datafusion::sql::sqlparser::ast::Value;
    let is_parquet = copy.stored_as.as_deref().map_or(
        copy.target.to_ascii_lowercase().ends_with(".parquet"),
        |s| s.eq_ignore_ascii_case("parquet"),
    );
    let key = format!("format.metadata::{MODEL_METADATA_KEY}");
    if is_parquet && !copy.options.iter().any(|(k, _)| *k == key) {
        if let Some(value) = models.metadata_value() {
            copy.options.push((key, Value::SingleQuotedString(value)));
        }
    }
    if copy.target.contains("://") {
        return Err(crate::Error::Invalid(format!(
            "COPY to `{}`: salient writes local paths only (atomically, via a temporary file)",
            copy.target
        )));
    }
    let target = std::path::PathBuf::from(&copy.target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    let directory_output = copy.target.ends_with('/') || target.extension().is_none();
    if directory_output && target.exists() {
        return Err(crate::Error::File {
            path: target,
            message: "exists; COPY to a directory writes a new directory (remove it first)".into(),
        });
    }
    // Same directory, so the final rename is atomic; keeps the extension DataFusion reads the
    // output kind from.
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let temporary = dir.join(match target.extension() {
        Some(ext) if !directory_output => {
            format!(".{name}.{unique}.tmp.{}", ext.to_string_lossy())
        }
        _ => format!(".{name}.{unique}.tmp"),
    });
    copy.target = if directory_output {
        format!("{}/", temporary.display())
    } else {
        temporary.display().to_string()
    };
    Ok(CopyTarget { temporary, target })
}
