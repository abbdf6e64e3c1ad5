"""The domains: the 2-D toy (`toy`) and Stable Diffusion (`sd`), behind the protocol in `base` and the registry in
`registry`. Only modules in this package know which domain they are."""
