//! `salient report`: the clusters to look at, in one HTML page.

use std::path::PathBuf;

use anyhow::Context;
use salient::data::{ColumnNames, SizePolicy};
use salient::report::ReportJob;

#[derive(clap::Args, Debug)]
pub(crate) struct ReportArgs {
    /// The model directory.
    #[arg(long)]
    model: PathBuf,
    /// The table to describe: a Parquet file, a directory of them, or a glob.
    #[arg(long)]
    input: String,
    /// Background-only images (the reference table), for the reference check.
    #[arg(long)]
    reference: Option<String>,
    /// Where report.html and the PNG figures go.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// Rows sampled uniformly for the maps.
    #[arg(long, default_value_t = 2000)]
    sample: usize,
    /// Images nearest each centroid in its montage.
    #[arg(long, default_value_t = 24)]
    nearest: usize,
    /// Random members of each cluster in its montage.
    #[arg(long, default_value_t = 8)]
    random: usize,
    /// A `salient compare --format json` result to chart (default: MODEL/compare.json if any).
    #[arg(long)]
    compare: Option<PathBuf>,
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Resize images whose size differs from the model's.
    #[arg(long)]
    resize: bool,
}

impl ReportArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let job = ReportJob {
            model: self.model,
            input: self.input,
            reference: self.reference,
            out: self.out,
            columns: ColumnNames {
                label: self.label_column,
                ..ColumnNames::default()
            },
            sample: self.sample,
            nearest: self.nearest,
            random: self.random,
            compare: self.compare,
            seed: self.seed,
            size: if self.resize {
                SizePolicy::Resize
            } else {
                SizePolicy::Exact
            },
        };
        let summary = salient::report::run(&job)
            .with_context(|| format!("reporting on {} with {}", job.input, job.model.display()))?;
        if let Some(s) = summary.scores {
            println!(
                "ACC {:.4}  NMI {:.4}  ARI {:.4}  (n = {})",
                s.acc, s.nmi, s.ari, s.n
            );
        }
        for note in &summary.notes {
            println!("note: {note}");
        }
        println!(
            "{} figures from {} rows; open {}",
            summary.figures.len(),
            summary.rows,
            summary.html.display()
        );
        Ok(())
    }
}
