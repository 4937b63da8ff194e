"""Assessment probes, one module per threat family; each registers itself with `@register("probes", ...)`."""
