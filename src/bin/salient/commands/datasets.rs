//! `salient datasets build` and `salient datasets list`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use salient::datasets::{self, DatasetName};

#[derive(clap::Args, Debug)]
pub(crate) struct DatasetsArgs {
    #[command(subcommand)]
    command: DatasetsCommand,
}

impl DatasetsArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self.command {
            DatasetsCommand::Build(args) => args.run(),
            DatasetsCommand::List(args) => args.run(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum DatasetsCommand {
    /// Write DIR/NAME/target.parquet and DIR/NAME/reference.parquet.
    Build(BuildArgs),
    /// List the datasets salient can build.
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    name: DatasetName,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where fetched sources (Fashion-MNIST) live; default $SALIENT_DATA_DIR or ~/.cache/salient/data.
    #[arg(long)]
    sources: Option<PathBuf>,
    /// Keep only the first N target images (after shuffling) and N references.
    #[arg(long)]
    rows: Option<usize>,
}

impl BuildArgs {
    fn run(self) -> anyhow::Result<()> {
        let Self {
            name,
            out,
            seed,
            sources,
            rows,
        } = self;
        let sources = sources.unwrap_or_else(datasets::default_sources_dir);
        let built = datasets::build_with_rows(name, &out, seed, &sources, rows)
            .with_context(|| format!("building dataset {name}"))?;
        println!(
            "{name}: {} target rows -> {}",
            built.target_rows,
            built.target.display()
        );
        println!(
            "{name}: {} reference rows -> {}",
            built.reference_rows,
            built.reference.display()
        );
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
struct ListArgs {}

impl ListArgs {
    fn run(self) -> anyhow::Result<()> {
        for name in DatasetName::value_variants() {
            println!(
                "{:<25} k={:<3} {}",
                name.as_str(),
                name.classes(),
                name.description()
            );
        }
        Ok(())
    }
}
