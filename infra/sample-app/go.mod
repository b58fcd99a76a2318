module berth.local/infra/sample-app

go 1.24.0
