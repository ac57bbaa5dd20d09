#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rathaus_protocol_fuzz::decode::<rathaus_protocol::GroupHandle>(data)
});
