//! The GPU placement check under a real launcher, with injected device lists (the tests
//! run it without a GPU): every rank claims the GPU whose UUID is entry `rank % len` of
//! `GANG_TEST_GPU_UUIDS` (comma-separated; an empty entry means no GPU), then
//! `gang::gpu_bind::preflight` runs over the gang's communicator. Two ranks of one host on
//! one UUID, or a rank without one, fail every rank with the same table of the plan.
//!
//! `gpu_preflight [--allow-sharing]`

#[cfg(feature = "cuda")]
fn main() {
    use gang::{execute, Config};
    use gang_protocol::device::{Device, PreflightPolicy};
    let (config, args) = Config::from_args(std::env::args().skip(1)).expect("arguments");
    let allow_sharing = args.iter().any(|a| a == "--allow-sharing");
    let uuids: Vec<String> =
        std::env::var("GANG_TEST_GPU_UUIDS").unwrap_or_default().split(',').map(str::to_string).collect();
    let result = execute(config, |ctx| {
        let uuid = &uuids[ctx.rank() % uuids.len()];
        let device = if uuid.is_empty() { Device::Cpu } else { Device::Cuda { ordinal: 0, visible_id: "0".into() } };
        let policy = PreflightPolicy { allow_sharing, require_gpu: true };
        gang::gpu_bind::preflight(
            ctx.comm(),
            ctx.host(),
            &device,
            (!uuid.is_empty()).then_some(uuid.as_str()),
            policy,
        )?;
        println!("rank {}: placement ok ({uuid})", ctx.rank());
        Ok(())
    });
    if result.is_err() {
        std::process::exit(1);
    }
}

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("gpu_preflight needs gang's `cuda` feature");
    std::process::exit(2);
}
