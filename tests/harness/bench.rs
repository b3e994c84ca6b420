//! What the end-to-end benches share: their entry point, arguments, percentiles and units.

use std::time::Duration;

/// Runs `f` on a multi-threaded runtime when the binary was started by `cargo bench` (which
/// passes `--bench`); `cargo test --benches` compiles it and runs nothing. `corral` is the
/// bench's own binary (`env!("CARGO_BIN_EXE_corral")`).
pub fn main_with<F: std::future::Future<Output = ()>>(
    corral: &str,
    f: impl FnOnce(Vec<String>) -> F,
) {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    crate::build::set_corral(corral);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f(args));
}

/// The value after `--name` in `args`, parsed, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a valid value"))
        })
        .unwrap_or(default)
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Mebibytes.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A task of the trivial fixture named `name`, reserving 1 MiB.
pub fn trivial_spec(sha256: &str, name: impl Into<String>) -> corral_proto::pb::TaskSpec {
    crate::server::spec(sha256, &name.into(), 1 << 20)
}

/// Uploads the trivial fixture; answers its sha256.
pub async fn upload_trivial(client: &mut crate::server::Client) -> String {
    crate::server::upload_wat(client, &crate::fixtures::wat("trivial")).await
}
