# alga-license: local dev/test stack (CONTRACT.md §8). The work is in scripts/stack.sh;
# everything it creates lives in .dev/ (gitignored). Servers listen on 127.0.0.1 only.
#
#   make test        lint, up, then cargo test --workspace with .dev/env exported, the API fuzz (fast),
#                    the bench smoke run and the packages' check (scripts/dist.sh --check)
#   make lint        rustfmt, clippy -D warnings, cargo-deny's dependency bans (scripts/lint.sh)
#   make up          deps + build + infra + issuer + gateway (ALGA_UP_SERVICES=0: no issuer/gateway)
#   make infra       deps + PKI, Postgres, SoftHSM2 conf/PINs, SMTP sink, S3, configs, .dev/env
#   make down        stop everything, keep data;   make clean-dev: down and remove .dev/
#   make status      what is running
#   make demo        up, then walk the whole journey (scripts/demo.sh), narrated
#   make bench       figures against this machine's ceilings (scripts/bench.sh), writes BENCHMARKS.md
#   make ha-up       up, then the HA topology on loopback (scripts/ha.sh): 3 etcd, 3 Patroni/Postgres 15
#                    nodes with synchronous replication, 2 issuers, 2 gateways behind HAProxy (.dev-ha/)
#   make ha-down     stop the HA topology (data kept; bash scripts/ha.sh clean removes it)
#   make soak        longer reliability runs, Postgres restart included (scripts/soak.sh, about 20 min; hang guards 4× each step)
#   make fuzz        cargo-fuzz targets, FUZZ_SECONDS (300) each (fuzz/run.sh); see RELIABILITY.md
#   make dist        release builds and the Debian packages, SBOMs and SHA256SUMS in dist/ (scripts/dist.sh)
#
# Ports: ALGA_PG_PORT (55432), ALGA_SMTP_PORT (2525), ALGA_S3_PORT (9000),
#        ALGA_GATEWAY_PORT (8443), ALGA_ISSUER_PORT (9443).
# Single services: bash scripts/stack.sh {pg,smtp,s3,issuer,gateway}-{start,stop}

SHELL := /bin/bash
STACK := bash scripts/stack.sh

.DEFAULT_GOAL := help
.PHONY: help deps build up infra services down clean-dev test lint demo status bench soak fuzz dist ha-up ha-down

help:
	@sed -n '1,/^$$/p' Makefile | sed -n 's/^# \{0,1\}//p'

deps:
	@$(STACK) deps

build:
	@$(STACK) build

up:
	@$(STACK) up

infra:
	@$(STACK) infra

services:
	@$(STACK) services

down:
	@$(STACK) down

clean-dev:
	@$(STACK) clean-dev

test:
	@$(STACK) test

demo:
	@$(STACK) demo

lint:
	@bash scripts/lint.sh

status:
	@$(STACK) status

bench:
	@$(STACK) up
	@bash scripts/bench.sh

ha-up:
	@$(STACK) up
	@bash scripts/ha.sh up

ha-down:
	@bash scripts/ha.sh down

soak:
	@$(STACK) up
	@bash scripts/soak.sh

fuzz:
	@bash fuzz/run.sh

dist:
	@bash scripts/dist.sh
