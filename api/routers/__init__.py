"""One router per resource (FastAPI's larger-application layout); `api.app.create_app`
includes them. Routes are thin: they check the caller and the input, then call the
store or `pipeline`."""
