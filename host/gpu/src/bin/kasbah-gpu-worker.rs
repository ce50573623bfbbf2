//! A kasbah GPU process (`kasbah-gpu-worker gpu-worker probe|serve`), started
//! by the platform, never by hand. See `kasbah_gpu::gpu_worker_main`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match args.first().map(String::as_str) {
        Some("gpu-worker") => &args[1..],
        _ => &args[..],
    };
    std::process::exit(kasbah_gpu::gpu_worker_main(args));
}
