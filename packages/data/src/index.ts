export {
  FASHION_MNIST_CLASS_NAMES,
  fashionMnistCacheDir,
  fashionMnistImage,
  loadFashionMnist,
  type DecodedImage,
  type FashionMnist,
  type FashionMnistOptions,
  type LabelledImages,
} from './fashion-mnist.ts';
