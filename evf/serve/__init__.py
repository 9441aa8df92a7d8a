"""``evf serve``: EVF-SAM over HTTP on LitServe (`evf.serve.server`)."""
