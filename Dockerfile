# Builds the pieskieo binary; used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
# Stateless: commit decisions live on the shards, so no volume is needed.
RUN useradd --system pieskieo
COPY --from=build /src/target/release/pieskieo /usr/local/bin/pieskieo
USER pieskieo
EXPOSE 6432
ENTRYPOINT ["pieskieo"]
CMD ["--config", "/etc/pieskieo/pieskieo.toml"]
