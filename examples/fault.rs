//! A gang in which one rank fails while its peers wait in a barrier; the tests run it
//! under `gang run` to check that the whole gang stops within seconds.
//!
//! `fault <panic|error|usage|input|exit CODE> RANK`: rank RANK panics, returns an error
//! (`error`: of user code, transient; `usage`: an invalid argument; `input`: a bad input
//! file), or exits with CODE (without telling anyone); every other rank waits in a
//! barrier, which only a gang abort can end.

use gang::{execute, Config};

fn main() {
    let (config, args) = Config::from_args(std::env::args().skip(1)).expect("arguments");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (kind, code, target) = match args.as_slice() {
        ["panic", r] => ("panic", 0, r.parse::<usize>().expect("rank")),
        [k @ ("error" | "usage" | "input"), r] => (*k, 0, r.parse().expect("rank")),
        ["exit", c, r] => ("exit", c.parse::<i32>().expect("code"), r.parse().expect("rank")),
        _ => {
            eprintln!("usage: fault <panic|error|usage|input|exit CODE> RANK");
            std::process::exit(2);
        }
    };
    let result = execute(config, |ctx| {
        ctx.comm().barrier()?;
        println!("rank {} of {} ready", ctx.rank(), ctx.world());
        if ctx.rank() == target {
            // Give the peers time to enter the barrier below.
            std::thread::sleep(std::time::Duration::from_millis(300));
            match kind {
                "panic" => panic!("injected panic on rank {target}"),
                "error" => return Err(gang::Error::External(format!("injected error on rank {target}").into())),
                "usage" => return Err(gang::Error::InvalidArgument(format!("injected usage error on rank {target}"))),
                "input" => {
                    return Err(gang::Error::input(
                        "data/part-7.parquet",
                        Some("row group 2".into()),
                        "injected bad input",
                    ))
                }
                _ => std::process::exit(code),
            }
        }
        ctx.comm().barrier()?;
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("fault: {e}");
        std::process::exit(1);
    }
}
