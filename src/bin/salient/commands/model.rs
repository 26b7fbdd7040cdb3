//! Using a trained model directory: `salient evaluate`, `salient export`, `salient inspect` and
//! `salient embed`.

use std::path::PathBuf;

use anyhow::Context;
use salient::data::SizePolicy;

use super::Format;

#[derive(clap::Args, Debug)]
pub(crate) struct EvaluateArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    input: String,
    #[arg(long, default_value = "label")]
    label_column: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[arg(long)]
    resize: bool,
}

impl EvaluateArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            model,
            input,
            label_column,
            format,
            resize,
        } = self;
        let size = if resize {
            SizePolicy::Resize
        } else {
            SizePolicy::Exact
        };
        let scores = salient::evaluate::evaluate_model(&model, &input, &label_column, size)
            .with_context(|| format!("evaluating {} on {input}", model.display()))?;
        match format {
            Format::Json => println!("{}", serde_json::to_string(&scores)?),
            Format::Text => println!(
                "ACC {:.4}  NMI {:.4}  ARI {:.4}  (n = {})",
                scores.acc, scores.nmi, scores.ari, scores.n
            ),
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    model: PathBuf,
}

impl ExportArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self { model } = self;
        let id = salient::export::export_model(&model)
            .with_context(|| format!("exporting {}", model.display()))?;
        println!(
            "{}: id {id}",
            model.join(salient::export::ONNX_FILE).display()
        );
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    model: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

impl InspectArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self { model, format } = self;
        let info = salient::infer::inspect(&model)
            .with_context(|| format!("inspecting {}", model.display()))?;
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&info)?),
            Format::Text => print!("{}", info.to_text()),
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct EmbedArgs {
    #[arg(long)]
    model: PathBuf,
    /// A Parquet file, a directory of them, or a glob.
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: PathBuf,
    /// Rows per record batch.
    #[arg(long, default_value_t = 1024)]
    batch_size: usize,
    /// ONNX Runtime threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Resize images of another size than the model's instead of failing.
    #[arg(long)]
    resize: bool,
    /// Give NULL outputs for undecodable images instead of failing.
    #[arg(long)]
    null_on_bad_image: bool,
}

impl EmbedArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            model,
            input,
            output,
            batch_size,
            threads,
            resize,
            null_on_bad_image,
        } = self;
        let mut job = salient::etl::EmbedJob::new(model, input, output);
        job.batch_size = batch_size;
        if let Some(t) = threads {
            job.threads = t;
        }
        job.resize = resize;
        job.null_on_bad_image = null_on_bad_image;
        let report = salient::etl::run(&job).with_context(|| format!("embedding {}", job.input))?;
        println!(
            "{} rows -> {} in {:.1} s (model {})",
            report.rows,
            report.output.display(),
            report.seconds,
            report.model_id
        );
        Ok(())
    }
}
