//! The gRPC messages and service traits generated from `proto/gpuproxy/v1` (build.rs), and the
//! encoded descriptors that server reflection answers from.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("gpuproxy.v1");

/// The protos' file descriptor set (with the well-known types they import).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gpuproxy_v1_descriptor.bin"));
