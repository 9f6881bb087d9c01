// mimalloc instead of glibc malloc: the request path allocates and frees small objects on one
// worker thread and drops them on another; glibc's arenas spent ~12% of the gateway's CPU on
// that under load (bench/README.md, "Allocator"). Built without transparent huge pages
// (`no_thp`): with them every 2 MiB of its arena a startup touched stayed resident, 26 MiB of an
// idle gateway's 57 (bench/README.md, "Memory and size").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
