# careloop service image (also used by the compose "sink" service).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY middleware ./middleware
RUN pip install . \
    && useradd --create-home --uid 10001 careloop
USER careloop

EXPOSE 8080 2575
CMD ["careloop", "serve", "--http-host", "0.0.0.0", "--mllp-host", "0.0.0.0"]
