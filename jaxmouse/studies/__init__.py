"""The studies jaxmouse reproduces, each a config as code plus a resumable ``run``."""
