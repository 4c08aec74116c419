module github.com/nylon-transport/nylon-transport/sdk/go

go 1.19
