//! An analyzer rule that passes a table's `id` column to `cluster_embed`, so errors name rows
//! by id.

use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;

use super::*;

/// The one Int64 column named `id` of a schema, if there is exactly one.
fn unique_id_column(
    schema: &datafusion::common::DFSchema,
) -> Option<datafusion::logical_expr::Expr> {
    let mut ids = schema
        .iter()
        .filter(|(_, f)| f.name() == "id" && *f.data_type() == DataType::Int64);
    match (ids.next(), ids.next()) {
        (Some(id), None) => Some(datafusion::logical_expr::Expr::Column(
            datafusion::common::Column::from(id),
        )),
        _ => None,
    }
}

/// Passes the table's `id` column to `cluster_embed(image[, 'model'])` wherever the call's input
/// has exactly one Int64 column named `id` (the image-table contract), so that a bad image in
/// plain SQL is reported by row id, as `embed` reports it. Output names stay as written.
#[derive(Debug)]
pub(super) struct AttachRowIds;

impl datafusion::optimizer::AnalyzerRule for AttachRowIds {
    fn name(&self) -> &str {
        "salient_attach_row_ids"
    }

    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &ConfigOptions,
    ) -> datafusion::common::Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::logical_expr::expr::ScalarFunction;
        use datafusion::logical_expr::expr_rewriter::NamePreserver;
        use datafusion::logical_expr::Expr;

        plan.transform_up_with_subqueries(|node| {
            let id = match node.inputs().as_slice() {
                [input] => unique_id_column(input.schema()),
                _ => None,
            };
            let Some(id) = id else {
                return Ok(Transformed::no(node));
            };
            let names = NamePreserver::new(&node);
            let rewritten = node.map_expressions(|expr| {
                let saved = names.save(&expr);
                let out = expr.transform_up(|e| match e {
                    Expr::ScalarFunction(f) if f.func.name() == UDF_NAME && f.args.len() < 3 => {
                        let mut args = f.args;
                        if args.len() == 1 {
                            args.push(datafusion::logical_expr::lit(DEFAULT_MODEL));
                        }
                        args.push(id.clone());
                        Ok(Transformed::yes(Expr::ScalarFunction(
                            ScalarFunction::new_udf(f.func, args),
                        )))
                    }
                    e => Ok(Transformed::no(e)),
                })?;
                Ok(out.update_data(|e| saved.restore(e)))
            })?;
            if rewritten.transformed {
                rewritten.map_data(|plan| plan.recompute_schema())
            } else {
                Ok(rewritten)
            }
        })
        .map(|t| t.data)
    }
}
