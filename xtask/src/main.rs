//! Project tasks: `cargo xtask <task>`.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::bail!("unknown task {:?}", args.first())
}
