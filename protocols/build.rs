//! Generates the protobuf messages and the ttrpc client/server glue from
//! `protos/` with ttrpc-codegen's pure-Rust parser (no protoc needed).
//!
//! The generated files carry inner attributes (`#![allow(...)]`, `//!`) which
//! `include!` inside a `mod {}` does not accept, so they are generated into a
//! scratch directory and copied to OUT_DIR without those lines.

use std::fs;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

const PROTOS: &[&str] = &["agent.proto", "health.proto", "oci.proto", "types.proto"];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let raw_dir = out_dir.join("raw");
    if raw_dir.exists() {
        fs::remove_dir_all(&raw_dir).expect("remove stale generated code");
    }
    fs::create_dir_all(&raw_dir).expect("create generated code dir");

    let proto_dir = Path::new("protos");
    let inputs: Vec<PathBuf> = PROTOS.iter().map(|p| proto_dir.join(p)).collect();
    println!("cargo:rerun-if-changed=protos");
    println!("cargo:rerun-if-changed=build.rs");

    Codegen::new()
        .out_dir(&raw_dir)
        .inputs(&inputs)
        .include(proto_dir)
        .rust_protobuf()
        .customize(Customize {
            gen_mod: false,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generate Rust code from protocols/protos (see the parser error above)");

    for entry in fs::read_dir(&raw_dir).expect("read generated code dir") {
        let path = entry.expect("generated file entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("read generated file");
        let kept: String = text
            .lines()
            .filter(|line| {
                let t = line.trim_start();
                !(t.starts_with("#![") || t.starts_with("//!"))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        fs::write(out_dir.join(path.file_name().expect("file name")), kept)
            .expect("write generated file");
    }
}
