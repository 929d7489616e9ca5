//! The codec of our gRPC services: prost's, with smaller buffers. tonic gives every call an
//! encode buffer of `buffer_size` up front (8 KiB by default) and keeps it for the call's life:
//! an idle event stream would hold 8 KiB for nothing. Here a call starts with 1 KiB, which
//! grows (by the message's need) for a larger answer, such as a page of offers.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec as TonicCodec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// A call's first buffer, and how much is encoded before a stream yields (tonic's default).
const SETTINGS: (usize, usize) = (1024, 32 * 1024);

fn settings() -> BufferSettings {
    BufferSettings::new(SETTINGS.0, SETTINGS.1)
}

/// The codec build.rs names for the generated services (`codec_path`).
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
