//! Checks the architecture invariants written in ARCHITECTURE.md, so they stay true:
//! 1. the pure core depends on no runtime, network, disk, clock or randomness crate;
//! 2. the core's source never reaches the wall clock, threads, the network, the disk or a
//!    random generator;
//! 3. only the storage crate names a concrete engine (fjall) or depends on one;
//! 4. in the node, only `wire.rs` (formats) and `settings.rs` (the config file) derive serde.

use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/ringkv has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()))
        {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    assert!(!out.is_empty(), "no Rust files under {}", dir.display());
    out
}

/// The names listed in a `[dependencies]` table of a manifest (not dev-dependencies).
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("manifest readable");
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").to_string();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name);
            }
        }
    }
    deps
}

#[test]
fn the_core_depends_only_on_pure_crates() {
    let allowed = [
        "base64",
        "bytes",
        "md-5",
        "postcard",
        "serde",
        "sha2",
        "thiserror",
        "xxhash-rust",
    ];
    let deps = dependencies(&crates_dir().join("ringkv-core/Cargo.toml"));
    assert!(
        deps.contains(&"md-5".to_string()),
        "the parser found the core's dependencies: {deps:?}"
    );
    for dep in &deps {
        assert!(
            allowed.contains(&dep.as_str()),
            "ringkv-core must stay pure, but depends on {dep}"
        );
    }
}

#[test]
fn the_core_source_does_no_io() {
    let forbidden = [
        "std::time",
        "SystemTime",
        "Instant",
        "std::thread",
        "std::net",
        "std::fs",
        "std::io::stdin",
        "std::env",
        "tokio",
        "rand::",
    ];
    for file in rust_files(&crates_dir().join("ringkv-core/src")) {
        let text = std::fs::read_to_string(&file).expect("readable");
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} mentions {word}: the core must not reach the outside world",
                file.display()
            );
        }
    }
}

#[test]
fn only_the_storage_crate_names_an_engine() {
    for krate in ["ringkv-core", "ringkv-node", "ringkv"] {
        let deps = dependencies(&crates_dir().join(krate).join("Cargo.toml"));
        for engine in ["fjall", "redb"] {
            assert!(
                !deps.contains(&engine.to_string()),
                "{krate} depends on the engine {engine}"
            );
        }
        for file in rust_files(&crates_dir().join(krate).join("src")) {
            let text = std::fs::read_to_string(&file).expect("readable");
            for name in ["FjallEngine", "fjall::", "MemoryEngine"] {
                assert!(
                    !text.contains(name),
                    "{} names the engine type {name}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn in_the_node_only_formats_derive_serde() {
    let allowed = ["wire.rs", "settings.rs"];
    let mut checked = 0;
    for file in rust_files(&crates_dir().join("ringkv-node/src")) {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&file).expect("readable");
        checked += 1;
        if allowed.contains(&name.as_str()) {
            continue;
        }
        for derive in ["Serialize,", "Serialize)", "Deserialize,", "Deserialize)"] {
            assert!(
                !text.contains(derive),
                "{} derives serde ({derive}); formats belong in wire.rs",
                file.display()
            );
        }
    }
    assert!(checked >= 5, "the node's modules were found");
}
