//! Compiles `proto/` into `OUT_DIR` and fetches the pinned ONNX Runtime library.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use prost::Message;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    compile_protos(&out_dir)?;
    fetch_onnxruntime(&out_dir);
    Ok(())
}

/// Every `.proto` under `proto/`, compiled with protox (no `protoc` needed).
fn compile_protos(out_dir: &Path) -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let mut protos = Vec::new();
    collect_protos(Path::new("proto"), &mut protos)?;
    protos.sort();
    if protos.is_empty() {
        return Ok(());
    }
    let descriptors = protox::compile(&protos, ["proto"]).context("compiling proto/")?;
    std::fs::write(out_dir.join("descriptors.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        // Tensors of hundreds of KB: decoded as slices of the received buffer, not copied.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .compile_fds(descriptors)
        .context("generating protobuf code")?;
    Ok(())
}

fn collect_protos(dir: &Path, protos: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, protos)?;
        } else if path
            .extension()
            .is_some_and(|extension| extension == "proto")
        {
            protos.push(path);
        }
    }
    Ok(())
}

/// Fetches `libonnxruntime.so` from the pinned PyPI wheel into `target/onnxruntime/` and tells
/// the binary where it is (`RESNET_SERVE_FETCHED_ORT`). A failure is a warning, not a build
/// error: `--ort-lib` or `ORT_DYLIB_PATH` can still point at a library at run time.
fn fetch_onnxruntime(out_dir: &Path) {
    println!("cargo:rerun-if-changed=scripts/fetch_onnxruntime.py");
    println!("cargo:rerun-if-env-changed=RESNET_SERVE_SKIP_ORT_FETCH");
    let gpu = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out; keep one copy per target dir.
    let target_dir = out_dir.ancestors().nth(4).unwrap_or(out_dir);
    let dest = target_dir.join(if gpu {
        "onnxruntime-gpu"
    } else {
        "onnxruntime"
    });
    let library = dest.join("libonnxruntime.so.1.31.1");
    println!(
        "cargo:rustc-env=RESNET_SERVE_FETCHED_ORT={}",
        library.display()
    );
    if std::env::var_os("RESNET_SERVE_SKIP_ORT_FETCH").is_some() || library.exists() {
        return;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = Command::new(python);
    command.arg("scripts/fetch_onnxruntime.py").arg(&dest);
    if gpu {
        command.arg("--gpu");
    }
    match command.status() {
        Ok(status) if status.success() => {}
        outcome => println!(
            "cargo:warning=could not fetch ONNX Runtime ({outcome:?}); run \
             `python3 scripts/fetch_onnxruntime.py {}` or pass --ort-lib",
            dest.display()
        ),
    }
}
