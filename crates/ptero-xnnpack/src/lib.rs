//! The XNNPACK delegate, in Rust: reads the subgraphs the official `XnnpackPartitioner`
//! lowers (`XnnpackBackend` blobs) and runs them on Ptero's own kernels.
//!
//! A blob is an optional `XH00` header ([`blob`]), a flatbuffer graph (`XN00`/`XN01`,
//! [`graph`]) and constant data, some of it kept in the program's named data (keyed by
//! SHA-256) or in an external `.ptd` file. Loading checks every offset, id and size and
//! names the node or value at fault, then plans the graph once: weights packed into the
//! compute core's layouts, intermediate buffers sized from the graph's declared shapes
//! and shared by values whose lives do not overlap. A node type or datatype this build
//! does not run is reported at load with its name and index. See
//! `docs/xnnpack-delegate.md`.
//!
//! ```
//! use ptero_xnnpack::XnnpackBackend;
//! use ptero_runtime::Backend;
//! assert_eq!(XnnpackBackend.name(), "XnnpackBackend");
//! // A blob that is not an XNNPACK graph is an error naming the delegate, not a panic.
//! let named = |_: &str| None;
//! let err = ptero_xnnpack::Summary::of(b"not a graph", &named).unwrap_err();
//! assert!(err.to_string().contains("XNNPACK graph"));
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

#[allow(unsafe_code, warnings, clippy::all)]
#[rustfmt::skip]
mod schema_generated;

/// The generated flatbuffer bindings of the delegate's schema.
pub(crate) mod fb {
    pub use crate::schema_generated::fb_xnnpack::*;
}

pub mod blob;
mod error;
mod fuse;
pub mod graph;
mod moves;
mod plan;
mod qplan;
mod quant;
mod rare;
mod run;
mod step;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};

use ptero_runtime::{Backend, BackendInitContext, CompileSpec, DelegateHandle};

pub use error::{Result, XnnError};
use graph::{ConstantSource, Graph};

/// The id the official exporter gives the delegate.
pub const BACKEND_ID: &str = "XnnpackBackend";

/// Runs `XnnpackBackend` delegates; register it with a
/// [`ptero_runtime::BackendRegistry`].
#[derive(Debug, Clone, Copy, Default)]
pub struct XnnpackBackend;

impl Backend for XnnpackBackend {
    fn name(&self) -> &str {
        BACKEND_ID
    }

    fn init(
        &self,
        ctx: &BackendInitContext<'_>,
        processed: &[u8],
        _compile_specs: &[CompileSpec],
    ) -> core::result::Result<Box<dyn DelegateHandle>, String> {
        let load = || -> Result<Box<dyn DelegateHandle>> {
            let blob = blob::Blob::parse(processed)?;
            let g = Graph::parse(&blob)?;
            check_constants(&g, &blob, ctx.named_data)?;
            if g.nodes.is_empty() {
                return Err(XnnError::Flatbuffer("the graph has no nodes".into()));
            }
            Ok(Box::new(plan::Executor::new(
                &g,
                &blob,
                ctx.named_data,
                ctx.release,
                ctx.max_memory,
            )?))
        };
        load().map_err(|e| e.to_string())
    }
}

/// Checks that every constant's bytes exist: blob regions were checked at parse; named
/// keys must be in the program's named data with the size the graph records.
fn check_constants<'d>(
    g: &Graph,
    blob: &blob::Blob<'_>,
    named: &(dyn Fn(&str) -> Option<&'d [u8]> + 'd),
) -> Result<()> {
    for (i, c) in g.constants.iter().enumerate() {
        match c {
            ConstantSource::Named { key, size } => {
                let data = named(key).ok_or_else(|| XnnError::Constant {
                    value: i,
                    what: format!(
                        "named data '{key}' is not in the program (weights kept in a .ptd \
                         file need it passed with --data)"
                    ),
                })?;
                if (data.len() as u64) < *size {
                    return Err(XnnError::Constant {
                        value: i,
                        what: format!(
                            "named data '{key}' has {} bytes, the graph expects {size}",
                            data.len()
                        ),
                    });
                }
            }
            ConstantSource::Blob { .. } | ConstantSource::Flatbuffer { .. } => {}
        }
    }
    let _ = blob;
    Ok(())
}

/// What a delegate holds, for `ptero inspect`: node types and datatypes with their
/// counts, and the bytes of constant data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub version: String,
    pub nodes: usize,
    pub values: usize,
    /// Node type name -> count.
    pub node_types: BTreeMap<String, usize>,
    /// Datatype name -> number of values of it.
    pub datatypes: BTreeMap<String, usize>,
    pub constant_bytes: u64,
    /// Constants kept in the program's named data (or a `.ptd` file).
    pub named_constants: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl Summary {
    /// Reads a delegate blob; `named` looks up the program's named data.
    pub fn of<'d>(
        processed: &[u8],
        named: &(dyn Fn(&str) -> Option<&'d [u8]> + 'd),
    ) -> Result<Summary> {
        let blob = blob::Blob::parse(processed)?;
        let g = Graph::parse(&blob)?;
        check_constants(&g, &blob, named)?;
        let mut s = Summary {
            version: g.version.clone(),
            nodes: g.nodes.len(),
            values: g.values.len(),
            inputs: g.input_ids.len(),
            outputs: g.output_ids.len(),
            ..Summary::default()
        };
        for n in &g.nodes {
            *s.node_types.entry(n.name.into()).or_default() += 1;
        }
        for v in &g.values {
            *s.datatypes.entry(v.dtype.name().into()).or_default() += 1;
        }
        for c in &g.constants {
            match c {
                ConstantSource::Blob { size, .. } | ConstantSource::Flatbuffer { size, .. } => {
                    s.constant_bytes += *size as u64
                }
                ConstantSource::Named { size, .. } => {
                    s.constant_bytes += size;
                    s.named_constants += 1;
                }
            }
        }
        Ok(s)
    }
}
