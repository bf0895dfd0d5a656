# pg2es image: a static-ish release binary on a slim Debian base, run as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The movies index definition is built into the binary (include_str!).
COPY catalog ./catalog
# The delete and write capture DDL is built in too.
COPY sql ./sql
RUN cargo build --release --locked --bin pg2es

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/pg2es --create-home pg2es
COPY --from=build /src/target/release/pg2es /usr/local/bin/pg2es
USER pg2es
WORKDIR /var/lib/pg2es
ENV ETL_STATE_FILE=/var/lib/pg2es/state.json \
    ETL_DEAD_LETTER_FILE=/var/lib/pg2es/dead-letter.jsonl \
    LOG_FORMAT=json
ENTRYPOINT ["pg2es"]
CMD ["run"]
