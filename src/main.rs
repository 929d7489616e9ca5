//! Entry point: everything but the allocator lives in the library (`gpuproxyd::cli`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(gpuproxyd::cli::main());
}
