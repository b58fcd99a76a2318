export {
  notFoundHandler,
  PROBLEM_CONTENT_TYPE,
  PROBLEM_TYPE_BASE,
  type Problem,
  problemFromError,
  problemMiddleware,
  sendProblem,
} from './problem.ts';
export {
  createMetricsRegistry,
  HealthRegistry,
  HttpServer,
  type HttpServerOptions,
  type MetricsAccess,
  type ReadinessCheck,
  requireBearer,
  type UpgradeHandler,
  withoutDeadline,
} from './server.ts';
