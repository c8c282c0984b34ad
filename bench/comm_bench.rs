//! Barrier latency and f64 allreduce from 8 B to 64 MiB through gang's [`gang::Comm`],
//! measured exactly as `bench/c/raw_mpi_comm.c` measures raw MPI (the limit).
//!
//! - `comm-bench run OUT.json`: run under `gang run -n N` (one JSON line per figure).
//! - `comm-bench compare --c C.json... --gang G.json... [--json OUT]`: best of the runs
//!   of each side, printed as a Markdown table with the ratio gang/C.
//!
//! `bench/comm.sh` builds both, runs them alternately and writes `bench/results/`.

use anyhow::{bail, Context as _, Result};
use gang::{Comm, ReduceOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

const BATCHES: usize = 7;
const SIZES: [usize; 9] = [8, 64, 512, 4096, 32768, 262_144, 2_097_152, 16_777_216, 67_108_864];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Figure {
    #[serde(rename = "impl")]
    imp: String,
    op: String,
    bytes: usize,
    ranks: usize,
    iters: usize,
    seconds: f64,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") if args.len() == 2 => run(&args[1]),
        Some("compare") => compare(&args[1..]),
        _ => bail!("usage: comm-bench run OUT.json | comm-bench compare --c C.json... --gang G.json... [--json OUT]"),
    }
}

fn iters_for(bytes: usize) -> usize {
    ((256usize << 20) / bytes.max(64)).clamp(5, 20_000)
}

/// Median over batches of the slowest rank's time per call.
fn time_batches(comm: &Comm, iters: usize, mut op: impl FnMut() -> gang::Result<()>) -> Result<f64> {
    let mut t = [0f64; BATCHES];
    for slot in t.iter_mut() {
        comm.barrier()?;
        let t0 = Instant::now();
        for _ in 0..iters {
            op()?;
        }
        let mine = t0.elapsed().as_secs_f64() / iters as f64;
        *slot = comm.allreduce_scalar(mine, ReduceOp::Max)?;
    }
    t.sort_by(f64::total_cmp);
    Ok(t[BATCHES / 2])
}

fn run(out: &str) -> Result<()> {
    let ctx = gang::init()?;
    let comm = ctx.comm();
    let mut figures = Vec::new();

    let iters = 20_000;
    for _ in 0..iters / 10 {
        comm.barrier()?;
    }
    let seconds = time_batches(comm, iters, || comm.barrier())?;
    figures.push(Figure { imp: "gang".into(), op: "barrier".into(), bytes: 0, ranks: ctx.world(), iters, seconds });

    for bytes in SIZES {
        let n = bytes / 8;
        let mut buf: Vec<f64> = (0..n).map(|i| (i % 17) as f64).collect();
        let iters = iters_for(bytes);
        for _ in 0..iters / 10 + 1 {
            comm.allreduce(&mut buf, ReduceOp::Sum)?;
        }
        let seconds = time_batches(comm, iters, || comm.allreduce(&mut buf, ReduceOp::Sum))?;
        figures.push(Figure {
            imp: "gang".into(),
            op: "allreduce_f64".into(),
            bytes,
            ranks: ctx.world(),
            iters,
            seconds,
        });
    }

    if ctx.rank() == 0 {
        let mut f = std::fs::File::create(out).with_context(|| format!("creating {out}"))?;
        for fig in &figures {
            writeln!(f, "{}", serde_json::to_string(fig)?)?;
        }
    }
    Ok(())
}

fn read_figures(path: &str) -> Result<Vec<Figure>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{path}: bad line {l:?}")))
        .collect()
}

/// Best (lowest) figure per (op, bytes) over several runs.
fn best(paths: &[String]) -> Result<BTreeMap<(String, usize), Figure>> {
    let mut m: BTreeMap<(String, usize), Figure> = BTreeMap::new();
    for p in paths {
        for f in read_figures(p)? {
            let key = (f.op.clone(), f.bytes);
            match m.get(&key) {
                Some(old) if old.seconds <= f.seconds => {}
                _ => {
                    m.insert(key, f);
                }
            }
        }
    }
    Ok(m)
}

fn human_bytes(b: usize) -> String {
    match b {
        0 => "-".into(),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn human_time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.2} µs", s * 1e6)
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

fn compare(args: &[String]) -> Result<()> {
    let (mut c, mut g, mut json_out) = (Vec::new(), Vec::new(), None);
    let mut side = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--c" => side = Some(0),
            "--gang" => side = Some(1),
            "--json" => json_out = Some(it.next().context("--json needs a path")?.clone()),
            p => match side {
                Some(0) => c.push(p.to_string()),
                Some(1) => g.push(p.to_string()),
                _ => bail!("unexpected argument {p:?}"),
            },
        }
    }
    if c.is_empty() || g.is_empty() {
        bail!("compare needs --c and --gang result files");
    }
    let (c, g) = (best(&c)?, best(&g)?);
    let ranks = g.values().next().map(|f| f.ranks).unwrap_or(0);
    println!("| operation | size | raw MPI (C) | gang Comm | gang / C | bandwidth (gang) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut worst: f64 = 0.0;
    for (key, gf) in &g {
        let Some(cf) = c.get(key) else { continue };
        let ratio = gf.seconds / cf.seconds;
        worst = worst.max(ratio);
        let bw = if gf.bytes > 0 { format!("{:.2} GB/s", gf.bytes as f64 / gf.seconds / 1e9) } else { "-".into() };
        println!(
            "| {} | {} | {} | {} | {:.2}x | {} |",
            key.0,
            human_bytes(key.1),
            human_time(cf.seconds),
            human_time(gf.seconds),
            ratio,
            bw
        );
        rows.push(serde_json::json!({
            "op": key.0, "bytes": key.1, "ranks": ranks,
            "c_seconds": cf.seconds, "gang_seconds": gf.seconds, "ratio": ratio,
        }));
    }
    println!("\nranks: {ranks}; worst ratio gang/C: {worst:.2}x (target: 1.10x or less at every size)");
    if let Some(path) = json_out {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::json!({ "ranks": ranks, "rows": rows, "worst_ratio": worst }))?,
        )
        .with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
