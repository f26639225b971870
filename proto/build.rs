//! Compiles the `.proto` files with `protox` (pure Rust), so a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: &[&str] = &[
        "proto/murmur/client/v1/client.proto",
        "proto/murmur/cluster/v1/cluster.proto",
    ];
    // `compile_fds` never sees the paths, so cargo must be told what to watch.
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(FILES, ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
