# Berth. Two set-up commands: `make up` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.PHONY: help up down status clean test test-unit bench check shellcheck lint fmt typecheck stop-service start-service

help:
	@echo "make up | down | status | clean | test | test-unit | bench | check | fmt"

up:        ## the whole local region, idempotent
	@bash infra/up.sh

down:      ## stop everything make up started; data stays
	@bash infra/down.sh

status:    ## every component: pid, address, health
	@bash infra/status.sh

clean: down ## stop everything and delete .local/
	@rm -rf .local

test:      ## set up what tests need, then every check, the unit tests and the integration tests
	@bash infra/test.sh

test-unit: ## the unit tests only: no region, nothing started (installs Node, pnpm and deps if missing)
	@bash -c 'source infra/lib.sh && source infra/node.sh && bash infra/bootstrap.sh && $$PNPM exec vitest run --project unit'

bench:     ## every benchmark in test/bench
	@bash infra/bench.sh

check:     ## lint, format check, type check, shellcheck of infra/
	@bash -c 'source infra/lib.sh && source infra/node.sh && bash infra/bootstrap.sh && $$PNPM run check'

lint: check
typecheck: check

fmt:       ## format everything
	@bash -c 'source infra/lib.sh && source infra/node.sh && $$PNPM run format'

stop-service:  ## stop one Berth service: make stop-service NAME=scheduler
	@bash infra/services.sh down $(NAME)

start-service: ## start one Berth service: make start-service NAME=scheduler
	@bash infra/services.sh up $(NAME)
