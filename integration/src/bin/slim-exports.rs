//! `slim-exports FILE.wasm [--keep-original COPY.wasm] [--no-body COPY.wasm]`:
//! removes, in place, the proxy-wasm callbacks the filter does not use from
//! the module's exports. With `--keep-original`, the module as built (SDK
//! exports) is saved first, for the bench; `--no-body` also writes a copy
//! without the body callbacks (`proxy_on_request_body`,
//! `proxy_on_response_body`, `proxy_on_request_trailers`, used only by
//! shadow compare; `proxy_on_response_trailers` stays, gRPC outcomes need
//! it), to measure what exporting them costs. A module already slimmed is left alone, so running
//! it twice is harmless.
//!
//! The Rust SDK exports every `proxy_on_*` callback, so Envoy enters the VM
//! for each of them on every request (`on_log`, `on_done`, one
//! `on_response_body` per body chunk, ...), even though our filter does
//! nothing there. Envoy skips a callback the module does not export. Only the
//! export entries go; the functions stay (unreferenced), every other section
//! is copied byte for byte. `make build` runs this on the release .wasm; the
//! bench measures what it saves.

use std::process::ExitCode;

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// Callbacks the filter does not use (see src/filter/mod.rs, which
/// implements only VM and plugin set-up, the tick, HTTP context creation and
/// deletion, request and response headers and bodies, request trailers
/// (the end of a shadowed request's body), response trailers (the
/// `grpc-status` of gRPC responses; for a message without trailers Envoy
/// does not call either), and the answers of shadow calls). Everything else
/// is kept, including the allocator the host
/// calls (`proxy_on_memory_allocate`). `proxy_on_queue_ready` goes too: the
/// filter calls the SDK's function itself (src/filter/shadow.rs), the host
/// never needs to.
const DROP: &[&str] = &[
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_queue_ready",
    "proxy_on_foreign_function",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_data",
    "proxy_on_upstream_connection_close",
];

/// The body callbacks (and the request trailers, which end a shadowed
/// request's body), dropped as well in the `--no-body` copy. The response
/// trailers are not among them: the outcome of a gRPC request reads them.
const BODY: &[&str] = &[
    "proxy_on_request_body",
    "proxy_on_response_body",
    "proxy_on_request_trailers",
];

fn slim(
    input: &[u8],
    drop: &[&str],
) -> Result<(Vec<u8>, Vec<String>), wasmparser::BinaryReaderError> {
    let mut module = Module::new();
    let mut dropped = Vec::new();
    for payload in Parser::new(0).parse_all(input) {
        let payload = payload?;
        match payload {
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for e in reader {
                    let e = e?;
                    if drop.contains(&e.name) {
                        dropped.push(e.name.to_string());
                        continue;
                    }
                    let kind = match e.kind {
                        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                    };
                    exports.export(e.name, kind, e.index);
                }
                module.section(&exports);
            }
            Payload::Version { .. } | Payload::End(_) => {}
            // Function bodies are inside the code section copied whole.
            Payload::CodeSectionEntry(_) => {}
            other => {
                if let Some((id, range)) = other.as_section() {
                    module.section(&RawSection {
                        id,
                        data: &input[range.start as usize..range.end as usize],
                    });
                }
            }
        }
    }
    Ok((module.finish(), dropped))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!(
            "usage: slim-exports FILE.wasm [--keep-original COPY.wasm] [--no-body COPY.wasm]"
        );
        ExitCode::from(2)
    };
    let Some((path, mut rest)) = args.split_first() else {
        return usage();
    };
    let path = path.clone();
    let (mut keep, mut no_body) = (None, None);
    while let [flag, copy, tail @ ..] = rest {
        match flag.as_str() {
            "--keep-original" => keep = Some(copy.clone()),
            "--no-body" => no_body = Some(copy.clone()),
            _ => return usage(),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return usage();
    }
    let input = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("slim-exports: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(copy) = &no_body {
        let all: Vec<&str> = DROP.iter().chain(BODY).copied().collect();
        let written = slim(&input, &all)
            .map_err(|e| e.to_string())
            .and_then(|(out, _)| std::fs::write(copy, out).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("slim-exports: {copy}: {e}");
            return ExitCode::FAILURE;
        }
    }
    match slim(&input, DROP) {
        Ok((_, dropped)) if dropped.is_empty() => {
            println!("slim-exports: {path}: already slim");
            ExitCode::SUCCESS
        }
        Ok((output, dropped)) => {
            if let Some(copy) = &keep {
                if let Err(e) = std::fs::write(copy, &input) {
                    eprintln!("slim-exports: {copy}: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if let Err(e) = wasmparser::Validator::new().validate_all(&output) {
                eprintln!("slim-exports: result does not validate: {e}");
                return ExitCode::FAILURE;
            }
            if let Err(e) = std::fs::write(&path, &output) {
                eprintln!("slim-exports: {path}: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "slim-exports: {path}: dropped {} unused callback exports ({})",
                dropped.len(),
                dropped.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slim-exports: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
