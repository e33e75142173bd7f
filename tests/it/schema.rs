//! `schema.graphql` is the SDL exported from the code; this test fails when it is stale.
//! Regenerate it with `cargo run -- schema > schema.graphql`.

#[test]
fn schema_graphql_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let actual = tickethold::graphql::sdl();
    assert!(
        committed == actual,
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql` and commit it"
    );
}
