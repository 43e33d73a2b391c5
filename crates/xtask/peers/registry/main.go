// The local cluster's container registry: go-containerregistry's
// pkg/registry (the OCI distribution API as that project's own tests and
// many others' serve it) behind Go's TLS, as a private registry on AWS is,
// and a push of a one-layer image, so the harness needs neither Docker on
// the build machine nor a registry client of its own.
//
//	registry serve ADDR CERT KEY   serves until killed; logs each request
//	registry push CA LAYER.TAR REF pushes LAYER.TAR as a linux image to REF
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"net/http"
	"os"
	"runtime"

	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func main() {
	if len(os.Args) == 5 && os.Args[1] == "serve" {
		serve(os.Args[2], os.Args[3], os.Args[4])
		return
	}
	if len(os.Args) == 5 && os.Args[1] == "push" {
		if err := push(os.Args[2], os.Args[3], os.Args[4]); err != nil {
			fmt.Fprintf(os.Stderr, "registry push: %v\n", err)
			os.Exit(1)
		}
		return
	}
	fmt.Fprintln(os.Stderr, "usage: registry serve ADDR CERT KEY | registry push CA LAYER.TAR REF")
	os.Exit(2)
}

func serve(addr, cert, key string) {
	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	server := &http.Server{Addr: addr, Handler: registry.New(registry.Logger(logger))}
	logger.Fatal(server.ListenAndServeTLS(cert, key))
}

func push(caFile, layer, ref string) error {
	img, err := crane.Append(empty.Image, layer)
	if err != nil {
		return err
	}
	// An image made from a bare layer names no platform; Docker pulls for
	// its own, and a config that says so is what a real build pushes.
	config, err := img.ConfigFile()
	if err != nil {
		return err
	}
	config = config.DeepCopy()
	config.OS = "linux"
	config.Architecture = runtime.GOARCH
	if img, err = mutate.ConfigFile(img, config); err != nil {
		return err
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: pool}
	return crane.Push(img, ref, crane.WithTransport(transport))
}
