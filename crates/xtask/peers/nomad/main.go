// The nomad command, assembled from Nomad's published packages so that the
// test peers are the real server and client code. Same shape as Nomad's own
// main.go.
package main

import (
	// Nomad re-executes itself as a task's helper processes; these packages'
	// init() functions detect that from os.Args and take over, so they must
	// be imported before anything else initialises.
	_ "github.com/hashicorp/nomad/client/allocrunner/taskrunner/getter"
	_ "github.com/hashicorp/nomad/client/allocrunner/taskrunner/template/renderer"
	_ "github.com/hashicorp/nomad/client/logmon"
	_ "github.com/hashicorp/nomad/drivers/docker/docklog"
	_ "github.com/hashicorp/nomad/drivers/shared/executor"

	"fmt"
	"os"

	"github.com/hashicorp/cli"
	"github.com/hashicorp/nomad/command"
	"github.com/hashicorp/nomad/version"
)

func main() {
	meta := new(command.Meta)
	meta.SetupUi(os.Args[1:])
	agentUI := &cli.BasicUi{Reader: os.Stdin, Writer: os.Stdout, ErrorWriter: os.Stderr}
	c := &cli.CLI{
		Name:       "nomad",
		Version:    version.GetVersion().FullVersionNumber(true),
		Args:       os.Args[1:],
		Commands:   command.Commands(meta, agentUI),
		HelpFunc:   cli.BasicHelpFunc("nomad"),
		HelpWriter: os.Stdout,
	}
	code, err := c.Run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error executing CLI: %s\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}
