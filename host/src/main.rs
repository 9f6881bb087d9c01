// mimalloc instead of glibc malloc: the request path allocates and frees small objects on one
// worker thread and drops them on another; glibc's arenas spent ~12% of the gateway's CPU on
// that under load (bench/README.md, "Allocator").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
