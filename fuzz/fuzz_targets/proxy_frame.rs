//! A proxy frame (`/clusterfunk/<key>/<env>/proxy/1` streams): any bytes decode to a frame or an
//! error, never a panic; a decoded frame encodes back to bytes that decode to the same frame.
#![no_main]
use clusterfunk_actors::proxy::Frame;
use clusterfunk_actors::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = wire::decode::<Frame>(data) {
        let bytes = frame.encode();
        let again: Frame = wire::decode(&bytes[4..]).expect("an encoded frame decodes");
        assert_eq!(again, frame);
    }
});
