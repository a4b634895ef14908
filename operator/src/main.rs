//! The `tenant-operator` binary: a thin `main` over the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tenant-operator", version, about = "Keeps a fleet of single-tenant EC2 hosts on the right image")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (or write one file per kind into a directory).
    Crd {
        /// Write `<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", tenant_operator::crd::all_crds_yaml()?);
        }
        Command::Crd { out_dir: Some(dir) } => {
            for (file, crd) in tenant_operator::crd::all_crds() {
                std::fs::write(dir.join(file), tenant_operator::crd::crd_yaml(&crd)?)?;
            }
        }
    }
    Ok(())
}
