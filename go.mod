module github.com/agentvault/agent-vault

go 1.26.8
