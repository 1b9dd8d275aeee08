//! Length-prefixed framing on every stream: any byte stream yields frames no longer than the
//! limit, then an error or the end, never a panic or an allocation of an announced length.
#![no_main]
use clusterfunk_actors::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let mut io = futures::io::Cursor::new(data);
        while let Ok(frame) = wire::read_frame(&mut io, 1024).await {
            assert!(frame.len() <= 1024);
        }
    });
});
