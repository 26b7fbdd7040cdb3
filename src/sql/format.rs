//! Printing query results as a table, JSON or CSV.

/// How `salient sql` prints results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

/// Formats record batches for the terminal or a pipe.
pub fn format_batches(
    batches: &[arrow::array::RecordBatch],
    format: OutputFormat,
) -> crate::Result<String> {
    let fail =
        |e: arrow::error::ArrowError| crate::Error::Invalid(format!("formatting results: {e}"));
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)
            .map_err(fail)?
            .to_string()),
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            for batch in batches {
                writer.write(batch).map_err(fail)?;
            }
            writer.finish().map_err(fail)?;
            let mut out = String::from_utf8_lossy(&writer.into_inner()).into_owned();
            if out.is_empty() {
                out.push_str("[]");
            }
            out.push('\n');
            Ok(out)
        }
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::csv::Writer::new(&mut out);
                for batch in batches {
                    writer.write(batch).map_err(|e| {
                        crate::Error::Invalid(format!(
                            "CSV output needs flat columns ({e}); select fields, e.g. cluster_embed(image)['cluster_id'], or use --format json"
                        ))
                    })?;
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}
