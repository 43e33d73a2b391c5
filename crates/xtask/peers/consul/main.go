// The consul command, assembled from Consul's published packages so that the
// test peers are the real server code. Same shape as Consul's own main.go.
package main

import (
	"fmt"
	"io"
	"log"
	"os"

	mcli "github.com/mitchellh/cli"

	"github.com/hashicorp/consul/command"
	"github.com/hashicorp/consul/command/cli"
	"github.com/hashicorp/consul/command/version"
	_ "github.com/hashicorp/consul/service_os"
)

func main() {
	log.SetOutput(io.Discard)
	ui := &cli.BasicUI{BasicUi: mcli.BasicUi{Writer: os.Stdout, ErrorWriter: os.Stderr}}
	commands := command.RegisteredCommands(ui)
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	c := &mcli.CLI{
		Args:        os.Args[1:],
		Commands:    commands,
		Name:        "consul",
		HelpFunc:    mcli.FilteredHelpFunc(names, mcli.BasicHelpFunc("consul")),
		HelpWriter:  os.Stdout,
		ErrorWriter: os.Stderr,
	}
	if c.IsVersion() {
		os.Exit(version.New(ui).Run(nil))
	}
	code, err := c.Run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error executing CLI: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}
