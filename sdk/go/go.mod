module nylon-transport/sdk/go

go 1.19
